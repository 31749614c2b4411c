"""
C++ core of pccl_arrays: master, peers, striped ring all-reduce
"""
from __future__ import annotations
import collections.abc
import typing
import typing_extensions
__all__: list[str] = ['BufferPool', 'CODES', 'Communicator', 'DEFAULTS', 'DLView', 'HostBuffer', 'MasterServer', 'OpInfo', 'PROTOCOL_VERSION', 'content_hash', 'log_attach_drain', 'log_level', 'log_take', 'memcpy', 'quantization_residual']
class MasterServer:
    def __init__(self, *, listen: str, peer_timeout: typing.SupportsFloat | typing.SupportsIndex = 10.0, handshake_timeout: typing.SupportsFloat | typing.SupportsIndex = 5.0, secret: bytes | None = None, encrypt: bool = False, rejoin_window: typing.SupportsFloat | typing.SupportsIndex = 1.5, require_inbound: bool = False) -> None:
        ...
    def links(self) -> list:
        ...
    def start(self) -> None:
        ...
    def stats(self) -> dict:
        ...
    def status(self) -> dict:
        ...
    def stop(self) -> None:
        ...
    @property
    def address(self) -> str:
        ...
    @property
    def epoch(self) -> int:
        ...
    @property
    def running(self) -> bool:
        ...
class OpInfo:
    @property
    def bytes_received(self) -> int:
        ...
    @property
    def bytes_sent(self) -> int:
        ...
    @property
    def op_id(self) -> int:
        ...
    @property
    def peers(self) -> list[int]:
        ...
    @property
    def rank(self) -> int:
        ...
    @property
    def seconds(self) -> float:
        ...
    @property
    def stripes(self) -> int:
        ...
    @property
    def world_size(self) -> int:
        ...
class Communicator:
    def __init__(self, *, master: str, peer_group: typing.SupportsInt | typing.SupportsIndex = 0, connections: typing.SupportsInt | typing.SupportsIndex = 4, listen: str = '0.0.0.0:0', advertise: str = '', connect_timeout: typing.SupportsFloat | typing.SupportsIndex = 10.0, heartbeat_interval: typing.SupportsFloat | typing.SupportsIndex = 0.5, master_timeout: typing.SupportsFloat | typing.SupportsIndex = 10.0, master_grace: typing.SupportsFloat | typing.SupportsIndex = 60.0, data_timeout: typing.SupportsFloat | typing.SupportsIndex = 30.0, piece_bytes: typing.SupportsInt | typing.SupportsIndex = 1048576, op_timeout: typing.SupportsFloat | typing.SupportsIndex = 1800.0, min_world: typing.SupportsInt | typing.SupportsIndex = 1, secret: bytes | None = None) -> None:
        ...
    def abandon(self, why: str) -> None:
        """
        Leaves the job because of an interrupt the core did not see; later calls raise `why`.
        """
    def acknowledge_loss(self, generation: typing.SupportsInt | typing.SupportsIndex) -> None:
        """
        The caller has seen a collective fail since master loss number `generation`: collectives go on.
        """
    def all_reduce(self, *, input_ptr: typing.SupportsInt | typing.SupportsIndex, output_ptr: typing.SupportsInt | typing.SupportsIndex, count: typing.SupportsInt | typing.SupportsIndex, dtype: typing.SupportsInt | typing.SupportsIndex, op: typing.SupportsInt | typing.SupportsIndex, tag: typing.SupportsInt | typing.SupportsIndex, qkind: typing.SupportsInt | typing.SupportsIndex = 0, qblock: typing.SupportsInt | typing.SupportsIndex = 0, qround: typing.SupportsInt | typing.SupportsIndex = 0, qseed: typing.SupportsInt | typing.SupportsIndex = 0, qrotate: bool = False, qdirect: bool = False, host_quantized: bool = False, shape: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] = [], structure: typing.SupportsInt | typing.SupportsIndex = 0, structure_text: str = '', timeout: typing.SupportsFloat | typing.SupportsIndex = -1.0) -> OpInfo:
        """
        Plain, or quantized: host_quantized takes arrays of the dtype and quantizes on the stripes' threads; otherwise input and output are quantized bytes (the device path).
        """
    def close(self) -> None:
        ...
    def collective(self, *, kind: typing.SupportsInt | typing.SupportsIndex, input_ptr: typing.SupportsInt | typing.SupportsIndex, output_ptr: typing.SupportsInt | typing.SupportsIndex, count: typing.SupportsInt | typing.SupportsIndex, output_count: typing.SupportsInt | typing.SupportsIndex, dtype: typing.SupportsInt | typing.SupportsIndex, op: typing.SupportsInt | typing.SupportsIndex = 0, root: typing.SupportsInt | typing.SupportsIndex = 0, tag: typing.SupportsInt | typing.SupportsIndex, shape: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex] = [], timeout: typing.SupportsFloat | typing.SupportsIndex = -1.0, pool: ... = None, qkind: typing.SupportsInt | typing.SupportsIndex = 0, qblock: typing.SupportsInt | typing.SupportsIndex = 0, qround: typing.SupportsInt | typing.SupportsIndex = 0, qseed: typing.SupportsInt | typing.SupportsIndex = 0, qrotate: bool = False, qdirect: bool = False) -> tuple[OpInfo, typing.Any]:
        """
        broadcast (kind 1), all_gather (2), reduce_scatter (3) or barrier (4); see communicator.hpp. Returns (info, None), or with output_ptr 0 (info, a flat HostBuffer holding the result, from `pool`).
        """
    def connect(self, admission_timeout: typing.SupportsFloat | typing.SupportsIndex) -> None:
        ...
    def connection_stats(self) -> list:
        ...
    def optimize_topology(self, timeout: typing.SupportsFloat | typing.SupportsIndex = -1.0) -> int:
        ...
    def pending_peers(self) -> int:
        ...
    def relay_stats(self) -> dict:
        ...
    def ring_ids(self) -> list[int]:
        ...
    def sync_state(self, *, entries: list, data_ptrs: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], revision: typing.SupportsInt | typing.SupportsIndex, strategy: typing.SupportsInt | typing.SupportsIndex, timeout: typing.SupportsFloat | typing.SupportsIndex = -1.0) -> dict:
        ...
    def update_topology(self, timeout: typing.SupportsFloat | typing.SupportsIndex = -1.0) -> None:
        ...
    @property
    def connected(self) -> bool:
        ...
    @property
    def data_address(self) -> str:
        ...
    @property
    def data_port(self) -> int:
        ...
    @property
    def dropped_data_connections(self) -> int:
        ...
    @property
    def group_rank(self) -> int:
        ...
    @property
    def group_world_size(self) -> int:
        ...
    @property
    def inbound(self) -> bool:
        ...
    @property
    def master_generation(self) -> int:
        ...
    @property
    def peer_id(self) -> int:
        ...
    @property
    def world_size(self) -> int:
        ...
class DLView:
    @staticmethod
    def from_capsule(capsule: typing_extensions.CapsuleType) -> DLView:
        """
        Takes over an unused DLPack capsule (legacy or versioned).
        """
    @property
    def compact(self) -> bool:
        ...
    @property
    def data(self) -> int:
        ...
    @property
    def device(self) -> tuple[int, int]:
        ...
    @property
    def dtype_code(self) -> int:
        ...
    @property
    def dtype_name(self) -> str:
        ...
    @property
    def itemsize(self) -> int:
        ...
    @property
    def readonly(self) -> bool:
        ...
    @property
    def shape(self) -> list[int]:
        ...
    @property
    def size(self) -> int:
        ...
    @property
    def strides(self) -> list[int]:
        ...
    @property
    def versioned(self) -> bool:
        ...
class BufferPool:
    """
    Recycled host memory for new results (buffer_pool.hpp).
    """
    def __init__(self, max_bytes: typing.SupportsInt | typing.SupportsIndex) -> None:
        ...
    def release(self) -> None:
        """
        Frees the memory held; later returns are freed too.
        """
    def stats(self) -> dict:
        ...
class HostBuffer:
    @staticmethod
    def alias(other: HostBuffer, dtype_code: typing.SupportsInt | typing.SupportsIndex) -> HostBuffer:
        ...
    @staticmethod
    def reshaped(other: HostBuffer, shape: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex]) -> HostBuffer:
        ...
    def __dlpack__(self, *, stream: typing.Any = None, max_version: typing.Any = None, dl_device: typing.Any = None, copy: typing.Any = None) -> typing_extensions.CapsuleType:
        ...
    def __dlpack_device__(self) -> tuple[int, int]:
        ...
    def __init__(self, shape: collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], dtype_code: typing.SupportsInt | typing.SupportsIndex, pool: BufferPool = None) -> None:
        ...
    @property
    def data(self) -> int:
        ...
    @property
    def dtype_code(self) -> int:
        ...
    @property
    def nbytes(self) -> int:
        ...
    @property
    def shape(self) -> list[int]:
        ...
def content_hash(data_ptr: typing.SupportsInt | typing.SupportsIndex, nbytes: typing.SupportsInt | typing.SupportsIndex) -> int:
    """
    The 64-bit content hash of shared state (docs/shared_state.md).
    """
def log_attach_drain() -> None:
    ...
def log_level() -> int:
    ...
def log_take(timeout: typing.SupportsFloat | typing.SupportsIndex) -> list[tuple[int, str]]:
    ...
def memcpy(dst_ptr: typing.SupportsInt | typing.SupportsIndex, src_ptr: typing.SupportsInt | typing.SupportsIndex, nbytes: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    Copies bytes between host buffers (packing pytrees).
    """
def quantization_residual(*, input_ptr: typing.SupportsInt | typing.SupportsIndex, output_ptr: typing.SupportsInt | typing.SupportsIndex, count: typing.SupportsInt | typing.SupportsIndex, dtype: typing.SupportsInt | typing.SupportsIndex, qkind: typing.SupportsInt | typing.SupportsIndex, qblock: typing.SupportsInt | typing.SupportsIndex, qseed: typing.SupportsInt | typing.SupportsIndex = 0, qrotate: bool = False) -> None:
    """
    What quantizing the input loses, x - D(Q(x)), into output (error feedback; docs/quantization.md).
    """
CODES: dict = {'dtype': {'int8': 0, 'uint8': 1, 'int16': 2, 'uint16': 3, 'int32': 4, 'uint32': 5, 'int64': 6, 'uint64': 7, 'float16': 8, 'bfloat16': 9, 'float32': 10, 'float64': 11}, 'op': {'sum': 0, 'avg': 1, 'prod': 2, 'max': 3, 'min': 4}, 'quant_kind': {'none': 0, 'minmax': 1, 'zeropoint': 2, 'minmax4': 3}, 'rounding': {'nearest': 0, 'stochastic': 1}, 'sync_strategy': {'enforce_popular': 0, 'receive_only': 1, 'send_only': 2}, 'error_kind': {'invalid_argument': 1, 'peer_lost': 2, 'too_few_peers': 3, 'master_unreachable': 4, 'protocol': 5, 'mismatch': 6, 'evicted': 7, 'state': 8, 'network': 9, 'timeout': 10, 'shared_state': 11, 'interrupted': 12, 'authentication': 13}}
DEFAULTS: dict = {'peer_timeout': 10.0, 'handshake_timeout': 5.0, 'rejoin_window': 1.5, 'connections': 4, 'connect_timeout': 10.0, 'heartbeat_interval': 0.5, 'master_timeout': 10.0, 'master_grace': 60.0, 'data_timeout': 30.0, 'piece_bytes': 1048576, 'op_timeout': 1800.0}
PROTOCOL_VERSION: int = 8
