"""
Test seams of pccl_arrays' core: for tests and benchmarks only
"""
from __future__ import annotations
import collections.abc
import typing
__all__: list[str] = ['MasterState', 'PROTOCOL_VERSION', 'SealedPipe', 'best_ring', 'decode_frame', 'dequantize', 'elect_state', 'encode_frame', 'finalize_avg', 'log_for_tests', 'master_cost', 'quantize', 'quantized_bytes', 'reduce_hop', 'reduce_hop_exact', 'reduce_into', 'reduce_owner', 'relay_recorded', 'relay_tap', 'ring_score', 'schema', 'solve_ring_exact', 'solve_ring_heuristic']
class MasterState:
    def __init__(self, peer_timeout: typing.SupportsFloat | typing.SupportsIndex = 10.0, handshake_timeout: typing.SupportsFloat | typing.SupportsIndex = 5.0, probe_addresses: bool = False, epoch: typing.SupportsInt | typing.SupportsIndex = 0, rejoin_window: typing.SupportsFloat | typing.SupportsIndex = 0.0, require_inbound: bool = False) -> None:
        ...
    def on_connect(self, conn: typing.SupportsInt | typing.SupportsIndex, addr: str, now: typing.SupportsFloat | typing.SupportsIndex) -> list:
        ...
    def on_disconnect(self, conn: typing.SupportsInt | typing.SupportsIndex, reason: str, now: typing.SupportsFloat | typing.SupportsIndex) -> list:
        ...
    def on_message(self, conn: typing.SupportsInt | typing.SupportsIndex, type: str, fields: dict, now: typing.SupportsFloat | typing.SupportsIndex) -> list:
        ...
    def on_probe_result(self, conn: typing.SupportsInt | typing.SupportsIndex, reachable: bool, reason: str, now: typing.SupportsFloat | typing.SupportsIndex) -> list:
        ...
    def on_tick(self, now: typing.SupportsFloat | typing.SupportsIndex) -> list:
        ...
    def stats(self) -> dict:
        ...
class SealedPipe:
    def __init__(self, secret: bytes, encrypt: bool) -> None:
        ...
    def open(self, arg0: bytes) -> list:
        ...
    def seal(self, arg0: bytes) -> bytes:
        ...
def best_ring(bandwidth: collections.abc.Sequence[collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex]], latency: collections.abc.Sequence[collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex]], admission: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> list[int]:
    ...
def decode_frame(frame: bytes) -> tuple[str, dict]:
    """
    Decodes one whole frame; raises ProtocolError on anything malformed.
    """
def dequantize(q_ptr: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex, kind: typing.SupportsInt | typing.SupportsIndex, block: typing.SupportsInt | typing.SupportsIndex, dtype: typing.SupportsInt | typing.SupportsIndex, out_ptr: typing.SupportsInt | typing.SupportsIndex, divide_by: typing.SupportsInt | typing.SupportsIndex = 1, rotate: bool = False, seed: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    ...
def elect_state(peers: list, group_revision: typing.Any = None) -> dict:
    ...
def encode_frame(type: str, fields: dict) -> bytes:
    """
    Header + payload of one message, for tests and tools.
    """
def finalize_avg(ptr: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex, dtype: typing.SupportsInt | typing.SupportsIndex, world: typing.SupportsInt | typing.SupportsIndex) -> None:
    ...
def log_for_tests(level: typing.SupportsInt | typing.SupportsIndex, text: str) -> None:
    """
    Emits one core log line (tests of the logging bridge).
    """
def master_cost(peers: typing.SupportsInt | typing.SupportsIndex, ops: typing.SupportsInt | typing.SupportsIndex) -> dict:
    """
    The master's time and answer bytes per all-reduce of `peers` peers, without sockets (benchmarks/scale.py).
    """
def quantize(x_ptr: typing.SupportsInt | typing.SupportsIndex, dtype: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex, kind: typing.SupportsInt | typing.SupportsIndex, block: typing.SupportsInt | typing.SupportsIndex, out_ptr: typing.SupportsInt | typing.SupportsIndex, rotate: bool = False, seed: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    ...
def quantized_bytes(n: typing.SupportsInt | typing.SupportsIndex, block: typing.SupportsInt | typing.SupportsIndex, kind: typing.SupportsInt | typing.SupportsIndex = 1) -> int:
    ...
def reduce_hop(acc_ptr: typing.SupportsInt | typing.SupportsIndex, own_ptr: typing.SupportsInt | typing.SupportsIndex, first_block: typing.SupportsInt | typing.SupportsIndex, n_blocks: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex, kind: typing.SupportsInt | typing.SupportsIndex, block: typing.SupportsInt | typing.SupportsIndex, rounding: typing.SupportsInt | typing.SupportsIndex = 0, seed: typing.SupportsInt | typing.SupportsIndex = 0, op_id: typing.SupportsInt | typing.SupportsIndex = 0, step: typing.SupportsInt | typing.SupportsIndex = 0, rotate: bool = False) -> None:
    """
    One ring hop over whole blocks: acc = Q(D(acc) + D(own)).
    """
def reduce_hop_exact(acc_ptr: typing.SupportsInt | typing.SupportsIndex, own_ptr: typing.SupportsInt | typing.SupportsIndex, dtype: typing.SupportsInt | typing.SupportsIndex, first_block: typing.SupportsInt | typing.SupportsIndex, n_blocks: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex, kind: typing.SupportsInt | typing.SupportsIndex, block: typing.SupportsInt | typing.SupportsIndex, rounding: typing.SupportsInt | typing.SupportsIndex = 0, seed: typing.SupportsInt | typing.SupportsIndex = 0, op_id: typing.SupportsInt | typing.SupportsIndex = 0, step: typing.SupportsInt | typing.SupportsIndex = 0, rotate: bool = False) -> None:
    """
    One ring hop adding our own unquantized values: acc = Q(D(acc) + R(float32(own))).
    """
def reduce_into(acc_ptr: typing.SupportsInt | typing.SupportsIndex, local_ptr: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex, dtype: typing.SupportsInt | typing.SupportsIndex, op: typing.SupportsInt | typing.SupportsIndex) -> None:
    ...
def reduce_owner(out_ptr: typing.SupportsInt | typing.SupportsIndex, received_ptrs: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], own_q_ptr: typing.SupportsInt | typing.SupportsIndex, own_x_ptr: typing.SupportsInt | typing.SupportsIndex, dtype: typing.SupportsInt | typing.SupportsIndex, first_block: typing.SupportsInt | typing.SupportsIndex, n_blocks: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex, kind: typing.SupportsInt | typing.SupportsIndex, block: typing.SupportsInt | typing.SupportsIndex, rounding: typing.SupportsInt | typing.SupportsIndex = 0, seed: typing.SupportsInt | typing.SupportsIndex = 0, op_id: typing.SupportsInt | typing.SupportsIndex = 0, rotate: bool = False) -> None:
    """
    The direct all-reduce's owner sum: Q(own + D(received[0]) + ...), own exact (own_x) or decoded (own_q).
    """
def relay_recorded() -> bytes:
    """
    What relay_tap kept.
    """
def relay_tap(record: typing.SupportsInt | typing.SupportsIndex = 0, flip_at: typing.SupportsInt | typing.SupportsIndex = -1) -> None:
    """
    Every relay of this process keeps the first `record` bytes of each pipe's opening direction, and flips the byte at `flip_at` of the next one once (transport/relay.hpp; record 0 and flip_at -1: off).
    """
def ring_score(bandwidth: collections.abc.Sequence[collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex]], latency: collections.abc.Sequence[collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex]], order: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> tuple[float, int, float]:
    ...
def schema() -> dict:
    """
    Every message and record as declared once in cpp/wire/messages.hpp.
    """
def solve_ring_exact(bandwidth: collections.abc.Sequence[collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex]], latency: collections.abc.Sequence[collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex]]) -> list[int]:
    ...
def solve_ring_heuristic(bandwidth: collections.abc.Sequence[collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex]], latency: collections.abc.Sequence[collections.abc.Sequence[typing.SupportsFloat | typing.SupportsIndex]], admission: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> list[int]:
    ...
PROTOCOL_VERSION: int = 8
