"""A peer's communicator: join the job, vote on the topology, all-reduce arrays."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from . import _core, arrays
from . import concurrent as _concurrent
from . import quantization as _quantization
from . import shared_state as _shared_state
from . import tree as _tree
from .quantization import Quantization
from .dtypes import FLOAT_DTYPES, dtype_code, op_code
from .errors import CommunicatorStateError, InvalidArgumentError, PCCLError, UnsupportedDTypeError


@dataclasses.dataclass(frozen=True)
class AllReduceInfo:
    """What one all-reduce did."""

    world_size: int  #: peers in the ring that ran the operation
    bytes_sent: int  #: bytes this peer wrote to its data connections (frame headers included)
    bytes_received: int  #: bytes this peer read from its data connections
    seconds: float  #: wall time from the start announcement to the commit
    stripes: int  #: connections the operation was striped over
    op_id: int  #: the master's id of the operation


class Communicator:
    """One peer's handle on a pccl_arrays job.

    Args:
        master: ``host:port`` of the master.
        peer_group: operations run among peers of the same group; admission votes are global.
        connections: k, the TCP connections to the ring successor; one operation is striped over all of them.
        listen: ``host:port`` for the data port (port 0: the OS chooses).
        advertise: the host (or ``host:port``) other peers should dial, when it differs from the address the
            master sees (NAT, port forwarding, a relay). Default: this peer's address toward the master.
        connect_timeout: seconds for TCP connects and for the master's welcome.
        heartbeat_interval: seconds between heartbeats to the master.
        master_timeout: seconds of silence from the master before it counts as unreachable.
        data_timeout: seconds without a byte of progress on a data connection before the operation fails.
        piece_bytes: size of the pieces an operation is pipelined in.
    """

    def __init__(
        self,
        master: str,
        peer_group: int = 0,
        connections: int = 4,
        *,
        listen: str = "0.0.0.0:0",
        advertise: Optional[str] = None,
        connect_timeout: float = 10.0,
        heartbeat_interval: float = 0.5,
        master_timeout: float = 10.0,
        data_timeout: float = 30.0,
        piece_bytes: int = 1024 * 1024,
    ):
        if not isinstance(peer_group, int) or peer_group < 0 or peer_group >= 2**32:
            raise InvalidArgumentError(f"peer_group must be an int in [0, 2**32), not {peer_group!r}")
        if not isinstance(connections, int) or not 1 <= connections <= 1024:
            raise InvalidArgumentError(f"connections must be an int in [1, 1024], not {connections!r}")
        self._core = _core.Communicator(
            master, peer_group, connections, listen, advertise or "", connect_timeout, heartbeat_interval,
            master_timeout, data_timeout, piece_bytes,
        )
        self.last_info: Optional[AllReduceInfo] = None
        self._concurrency = _concurrent.Concurrency(self)

    # -- membership ---------------------------------------------------------------------------------------------
    def connect(self, timeout: Optional[float] = None) -> "Communicator":
        """Joins the job and waits to be admitted (at the other peers' next :meth:`update_topology`).

        Args:
            timeout: seconds to wait for admission; None waits as long as the master is alive.
        Raises:
            MasterUnreachableError: the master cannot be reached or stops answering.
            PCCLTimeoutError: not admitted within ``timeout``.
        """
        self._core.connect(-1.0 if timeout is None else float(timeout))
        return self

    def update_topology(self) -> None:
        """Collective over all accepted peers: admits pending peers and rewires the ring.

        Raises:
            CommunicatorStateError: async operations are in flight (wait for their handles first).
        """
        if self._concurrency.in_flight():
            raise CommunicatorStateError(f"update_topology() while {self._concurrency.in_flight()} async "
                                         "all-reduce(s) are in flight: wait for their handles first")
        self._concurrency.restart_auto_tags()
        self._core.update_topology()

    def are_peers_pending(self) -> bool:
        """Whether peers wait for admission (so an :meth:`update_topology` would admit someone)."""
        return self._core.pending_peers() > 0

    @property
    def world_size(self) -> int:
        """Accepted peers of all groups, as of the last topology update."""
        return self._core.world_size

    @property
    def group_world_size(self) -> int:
        """Peers in this peer's group, as of the last topology update or operation."""
        return self._core.group_world_size

    @property
    def peer_id(self) -> int:
        return self._core.peer_id

    @property
    def data_address(self) -> str:
        """``host:port`` other peers dial to reach this peer's data port."""
        return self._core.data_address

    @property
    def data_port(self) -> int:
        """The port this peer's data socket listens on (it differs from ``data_address`` behind a relay or NAT)."""
        return self._core.data_port

    def connection_stats(self) -> list:
        """Per pooled connection: peer, index, direction ('send' or 'recv') and bytes moved (diagnostics)."""
        return self._core.connection_stats()

    def close(self) -> None:
        """Leaves the job gracefully: the others see a smaller world, not an error. Waits for async
        operations in flight to end first."""
        self._concurrency.shutdown()
        self._core.close()

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- shared state -------------------------------------------------------------------------------------------
    def sync_shared_state(self, state: "_shared_state.SharedState",
                          strategy: str = "enforce_popular") -> "_shared_state.SyncInfo":
        """Collective over the group: makes ``state`` bit-identical to the group's (docs/shared_state.md).

        Every peer of the group must call it at the same point of its loop (a peer that has just connected
        calls it first: its admission was the others' update_topology()).

        Args:
            state: the :class:`~pccl_arrays.SharedState` to sync; entries that differ from the elected content
                are overwritten (mutable arrays in place, JAX arrays replaced) and ``state.revision`` becomes
                the group's.
            strategy: ``"enforce_popular"`` (default: take part in the election, adopt the winner),
                ``"receive_only"`` (never offer content: a newcomer) or ``"send_only"`` (this peer's content
                must win, else SharedStateError).
        Returns:
            a :class:`~pccl_arrays.SyncInfo`: the revision, the entries received, bytes sent and received (0 and
            0 when every peer already held the same state), bytes per source peer.
        Raises:
            SharedStateError: this peer was refused (different names, dtypes or shapes; revision ahead of the
                group by more than one; send-only without the group's state); its state is unchanged.
            PeerLostError: a peer failed during the transfer; nothing was changed anywhere; retry.
            OperationMismatchError: other peers called a different collective (all_reduce, update_topology).
            CommunicatorStateError: all-reduces are in flight on this peer (wait for their handles first).
        """
        if self._concurrency.in_flight():
            raise CommunicatorStateError(f"sync_shared_state() while {self._concurrency.in_flight()} async "
                                         "all-reduce(s) are in flight: wait for their handles first")
        self._concurrency.restart_auto_tags()
        return _shared_state.sync(self._core, state, strategy)

    # -- collectives --------------------------------------------------------------------------------------------
    def all_reduce(self, x: Any, op: str = "sum", out: Any = None, *, tag: int = 0, quantization=None,
                   return_info: bool = False):
        """All-reduces ``x`` over the peers of this group.

        Args:
            x: a torch tensor (CPU or CUDA), JAX array (CPU or GPU), CuPy array or NumPy array of int8..uint64,
                float16, bfloat16 or float32/float64; any shape, any strides.
            op: ``"sum"``, ``"avg"`` (floating dtypes only), ``"prod"``, ``"max"`` or ``"min"``.
            out: None for a new array of x's framework and device, ``x`` itself for in place (torch, NumPy,
                CuPy; JAX arrays are immutable), or another mutable array of the same shape and dtype.
            tag: distinguishes operations; every peer of the group must use the same tag for the same operation.
            quantization: None, ``"minmax"`` / ``"zeropoint"``, or a :class:`~pccl_arrays.Quantization`: moves
                uint8 blocks instead of the dtype (about 4x fewer bytes than float32) for sum and avg of
                floating arrays; every peer must use the same settings (docs/quantization.md).
            return_info: also return an :class:`AllReduceInfo` (it is always kept in :attr:`last_info`).
        Returns:
            the result (``out`` when given), or ``(result, info)`` with ``return_info=True``.
        Raises:
            PeerLostError: a peer failed during the operation; ``x`` and ``out`` are unchanged; retry.
            OperationMismatchError: peers started different operations; nothing was changed.
            UnsupportedDTypeError / InvalidArgumentError: bad input (also TypeError / ValueError).
        """
        fw = arrays.framework_of(x)
        name = arrays.dtype_name_of(x)
        dcode = dtype_code(name)
        ocode = op_code(op, name)
        if not isinstance(tag, int) or not 0 <= tag < 2**64:
            raise InvalidArgumentError(f"tag must be an int in [0, 2**64), not {tag!r}")
        in_place = out is x
        if in_place and fw == "jax":
            raise InvalidArgumentError("JAX arrays are immutable: use the returned array (out=None)")
        if out is not None and not in_place:
            _check_out(x, out, fw)
        target = x if in_place else out
        if target is not None and fw == "numpy" and not target.flags.writeable:
            raise InvalidArgumentError("the output array is read-only; pass out=None for a new array")
        quant = Quantization.of(quantization)
        if quant is not None:
            if name not in FLOAT_DTYPES or op.lower() not in ("sum", "avg"):
                raise UnsupportedDTypeError(f"quantized all-reduce is for sum and avg of floating arrays, not {op} "
                                            f"of {name}")

        on_device = arrays.device_of(x, fw)[0] not in arrays.HOST_DEVICES
        if quant is not None and (quant.path == "triton" or (quant.path == "auto" and on_device)):
            return self._finish(*_device_path(self, x, fw, name, dcode, ocode, op, target, tag, quant), return_info)
        src, _host_x, host_fw, _ = arrays.compact_host_view(x, fw)
        if src.readonly and in_place:
            raise InvalidArgumentError("the output array is read-only; pass out=None for a new array")

        buf = None
        if target is not None and not on_device and (dst := arrays.host_view(target, fw)).compact:
            pass  # the result lands straight in the caller's memory (in place: the core keeps x until the commit)
        else:
            buf = arrays.new_host_buffer(src.shape, name)
            dst = arrays.buffer_view(buf, name)
        if quant is None:
            info = self._core.all_reduce(src.ptr, dst.ptr, src.count, dcode, ocode, tag)
        else:  # host path: C++ kernels quantize, the ring reduces blocks, the committed result decodes into dst
            kind, block, rounding, seed = quant.core_args
            q_in, q_out = self._quant_buffers(_core.quantized_bytes(src.count, block))
            _core.quantize(src.ptr, dcode, src.count, kind, block, q_in.data)
            # exact_ptr: each hop adds our unquantized values rather than our decoded blocks (less error)
            info = self._core.all_reduce(q_in.data, q_out.data, src.count, dcode, ocode, tag, kind, block, rounding,
                                         seed, src.ptr)
            _core.dequantize(q_out.data, src.count, kind, block, dcode, dst.ptr,
                             info.world_size if op.lower() == "avg" else 1)
        if target is None:
            result = arrays.wrap(buf, name, fw, like=x)
        else:
            if buf is not None:  # strided or device output: write the committed result back
                arrays.copy_back(target, arrays.wrap(buf, name, host_fw if fw != "cupy" else "numpy"), fw)
            result = target
        return self._finish(result, info, return_info)

    def _quant_buffers(self, nbytes: int):
        """Two host buffers of at least nbytes for the quantized ring, kept between calls: fresh pages cost a
        fault each on first touch (about 80 ms per 256 MiB here)."""
        bufs = getattr(self, "_qbufs", None)
        if bufs is None or bufs[0].nbytes < nbytes:
            u8 = dtype_code("uint8")
            bufs = self._qbufs = (_core.HostBuffer([nbytes], u8), _core.HostBuffer([nbytes], u8))
        return bufs

    def _finish(self, result: Any, info: Any, return_info: bool):
        self.last_info = AllReduceInfo(info.world_size, info.bytes_sent, info.bytes_received, info.seconds,
                                       info.stripes, info.op_id)
        return (result, self.last_info) if return_info else result

    def all_reduce_async(self, x: Any, op: str = "sum", out: Any = None, *, tag: Optional[int] = None,
                         quantization=None) -> "_concurrent.AllReduceHandle":
        """Starts an all-reduce and returns at once; ``handle.wait()`` gives the result.

        Many may be in flight (tested with 16) while Python keeps computing. Every peer must start the same
        operations with the same tags; without ``tag`` a per-communicator counter assigns one, which agrees
        across peers when they start their async operations in the same order since the last
        :meth:`update_topology` or :meth:`sync_shared_state` (where the counter restarts, so that newcomers agree). Do not touch ``x`` (or ``out``)
        until the handle is done. ``update_topology()`` refuses to run while operations are in flight.

        Raises:
            InvalidArgumentError: the tag is already in flight on this communicator.
        """
        return self._concurrency.submit(x, op, out, tag, quantization)

    def all_reduce_many(self, arrays, op: str = "sum", *, outs=None, max_in_flight: int = 4, retries: int = 3,
                        tag_base: int = 1 << 48, quantization=None) -> list:
        """All-reduces every array of a list, ``max_in_flight`` at a time, retrying the ones a lost peer
        failed (``retries`` times each, on the smaller ring) without redoing those that committed.

        Returns:
            the results in order; each one committed on every peer of its ring.
        Raises:
            the first non-retryable error, or a retryable one after ``retries`` attempts of the same array.
        """
        return self._concurrency.many(list(arrays), op, outs, max_in_flight, retries, tag_base, quantization)

    def all_reduce_tree(self, tree: Any, op: str = "sum", *, inplace: bool = False, tag: int = 0) -> Any:
        """All-reduces every leaf of a pytree: one operation per dtype, leaves packed into one buffer each.

        Args:
            tree: a JAX pytree, or nested dicts / lists / tuples of torch, NumPy or CuPy arrays (mixed dtypes
                and frameworks allowed); every peer must pass the same structure, shapes and dtypes.
            op: as for :meth:`all_reduce` (``avg`` needs every leaf to be floating).
            inplace: also write the results into mutable leaves (torch, NumPy, CuPy), after every dtype
                group has committed; JAX leaves are always replaced.
            tag: as for :meth:`all_reduce`.
        Returns:
            a tree of the same structure holding the results, each leaf in its own framework and device.
        Raises:
            PeerLostError: nothing was written; retry the whole call.
        """
        return _tree.all_reduce_tree(self, tree, op, inplace=inplace, tag=tag)

    def _reduce_buffers(self, src, dst, name: str, op: str, tag: int) -> None:
        """All-reduces one core-owned host buffer into another (used by all_reduce_tree)."""
        info = self._core.all_reduce(src.data, dst.data, int(np.prod(src.shape, dtype=np.int64)), dtype_code(name),
                                     op_code(op, name), tag)
        self.last_info = AllReduceInfo(info.world_size, info.bytes_sent, info.bytes_received, info.seconds,
                                       info.stripes, info.op_id)


def _device_path(comm: Communicator, x: Any, fw: str, name: str, dcode: int, ocode: int, op: str, target: Any,
                 tag: int, quant: Quantization):
    """Quantized all-reduce through the Triton kernels: quantize where x lives, move only the compact bytes to
    the host, reduce, move the result bytes back and decode them on x's device."""
    import torch

    k = _quantization.kernels()
    kind, block, rounding, seed = quant.core_args
    xt = _quantization.as_device_tensor(x, fw).contiguous().reshape(-1)
    q_in = k.quantize(xt, kind, block).to("cpu").contiguous()  # the compact bytes cross to the host
    q_out = torch.empty_like(q_in)
    info = comm._core.all_reduce(q_in.data_ptr(), q_out.data_ptr(), xt.numel(), dcode, ocode, tag, kind, block,
                                 rounding, seed)
    divide_by = info.world_size if op.lower() == "avg" else 1
    q_dev = q_out.to(xt.device)
    if target is not None and fw == "torch" and target.is_contiguous():
        k.dequantize(q_dev, xt.numel(), kind, block, xt.dtype, divide_by, out=target.detach().reshape(-1))
        return target, info
    r = k.dequantize(q_dev, xt.numel(), kind, block, xt.dtype, divide_by).reshape(tuple(x.shape))
    result = _quantization.from_device_tensor(r, fw)
    if target is not None:
        arrays.copy_back(target, result, fw)
        return target, info
    return result, info


def _check_out(x: Any, out: Any, fw: str) -> None:
    if arrays.framework_of(out) != fw or fw == "jax":
        raise InvalidArgumentError(f"out must be a mutable {fw} array like x (or x itself)")
    if tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype:
        raise InvalidArgumentError("out must be x itself or an array of the same shape and dtype")
    if arrays.device_of(out, fw) != arrays.device_of(x, fw):
        raise InvalidArgumentError("out must be on the same device as x")
    if fw == "numpy":
        overlap = np.shares_memory(out, x)
    else:
        a, b = arrays.host_extent(x, fw), arrays.host_extent(out, fw)
        overlap = a[0] < b[1] and b[0] < a[1]
    if overlap:
        raise InvalidArgumentError("out overlaps x without being x; pass out=x for in place")


__all__ = ["Communicator", "AllReduceInfo", "PCCLError"]
