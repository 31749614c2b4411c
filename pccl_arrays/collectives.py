"""broadcast, all_gather, reduce_scatter and barrier: the collectives beside all-reduce (docs/collectives.md).

How this works. A call takes a host view of the caller's array through DLPack (as all_reduce does: zero-copy
on the host, staged by its framework from a device), sizes the result from the group as this peer last saw it
(``comm.world_size`` peers, this one at ``comm.rank``), and hands both buffers to the core's ``collective()``.
The core agrees a descriptor with the other peers (the collective, dtype, op, shape, the broadcast's root), moves
the bytes straight between peers over the striped connections, and publishes the result only once the master
has committed the operation on every peer. If the group changed after the result was sized (a peer was lost),
every peer gets PeerLostError and the retry is sized from the new group.

Ranks are positions in the group's ring order (``comm.ring()``), which changes only when the group does: at
update_topology() / optimize_topology(), and when a lost peer leaves the ring of the next operation.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _core, arrays
from .call_args import call_args, check_tag, target_of
from .dtypes import dtype_code, op_code
from .errors import InvalidArgumentError
from .quantization import Quantization

BROADCAST, ALL_GATHER, REDUCE_SCATTER, BARRIER = 1, 2, 3, 4  # OpDesc.collective (docs/protocol.md)
_NAMES = {BROADCAST: "broadcast", ALL_GATHER: "all_gather", REDUCE_SCATTER: "reduce_scatter", BARRIER: "barrier"}


def chunk_rows(rows: int, world: int, rank: int) -> tuple[int, int]:
    """[first, first + n) of the rows chunk ``rank`` of ``world`` holds: numpy.array_split's cut (the first
    ``rows % world`` chunks hold one row more)."""
    base, rem = divmod(rows, world)
    return rank * base + min(rank, rem), base + (1 if rank < rem else 0)


def broadcast(core, pool, x: Any, root: int, out: Any, tag: int, timeout: Optional[float]):
    ring = core.ring_ids()
    if isinstance(root, bool) or not isinstance(root, int) or not 0 <= root < len(ring):
        raise InvalidArgumentError(f"root must be a rank of the group, an int in [0, {len(ring)}), not {root!r}")
    return _run(core, pool, BROADCAST, x, lambda world, rank: tuple(x.shape), out, "sum", ring[root], tag, timeout,
                in_place=True)


def all_gather(core, pool, x: Any, out: Any, tag: int, timeout: Optional[float], quantization=None):
    return _run(core, pool, ALL_GATHER, x, lambda world, rank: (world,) + tuple(x.shape), out, "sum", 0, tag, timeout,
                quantization=quantization)


def reduce_scatter(core, pool, x: Any, op: str, out: Any, tag: int, timeout: Optional[float], quantization=None):
    if len(x.shape) == 0:
        raise InvalidArgumentError("reduce_scatter needs an array of at least one dimension (it cuts the first)")

    def shape(world: int, rank: int) -> tuple:
        return (chunk_rows(int(x.shape[0]), world, rank)[1],) + tuple(x.shape[1:])

    return _run(core, pool, REDUCE_SCATTER, x, shape, out, op, 0, tag, timeout, quantization=quantization)


def barrier(core, pool, tag: int, timeout: Optional[float]):
    check_tag(tag)
    info, _ = core.collective(kind=BARRIER, input_ptr=0, output_ptr=0, count=0, output_count=0, dtype=0, tag=tag,
                              **call_args((), timeout))
    return None, info


def _run(core, pool, kind: int, x: Any, shape_for, out: Any, op: str, root_id: int, tag: int,
         timeout: Optional[float], in_place: bool = False, quantization=None):
    """Runs one collective from x; ``shape_for(world, rank)`` is the result's shape. Returns (result, the core's
    info).

    Without ``out`` the core sizes the result from the operation's own group (so a retry after a lost peer
    needs no resizing); a given ``out`` must fit the group as this peer last saw it."""
    fw = arrays.framework_of(x)
    name = arrays.dtype_name_of(x)
    dcode, ocode = dtype_code(name), op_code(op, name)
    call = call_args(x.shape, timeout)
    check_tag(tag)
    quant = Quantization.of(quantization)
    if quant is not None:  # the host kernels quantize (a device array goes through a host copy)
        quant.check_for(name, op)
        call.update(quant.core_args)
    out_shape = shape_for(core.group_world_size, core.group_rank)
    target = target_of(x, out, fw, out_shape, in_place)
    src, _host, host_fw, on_device = arrays.compact_host_view(x, fw)
    if src.readonly and out is x:
        raise InvalidArgumentError("the output array is read-only; pass out=None for a new array")
    dst = None
    if target is x and not on_device:
        dst = src  # in place: the core keeps the result in scratch until the commit
    elif target is not None and not on_device and (view := arrays.host_view(target, fw)).compact:
        dst = view  # the result lands straight in the caller's memory
    info, buf = core.collective(
        kind=kind, input_ptr=src.ptr, output_ptr=0 if dst is None else dst.ptr, count=src.count,
        output_count=int(np.prod(out_shape, dtype=np.int64)), dtype=dcode, op=ocode, root=root_id, tag=tag,
        pool=pool, **call)
    if buf is not None:
        buf = _core.HostBuffer.reshaped(buf, list(shape_for(info.world_size, info.rank)))
    return arrays.deliver(buf, target, name, fw, host_fw, x), info
