"""All-reduce of a whole pytree (a JAX pytree, or nested dicts / lists / tuples of torch, NumPy or CuPy arrays).

How this works. The leaves are flattened in a fixed order (JAX's tree_util when JAX is loaded, else dict keys
sorted, then lists and tuples in order), grouped by dtype and packed, group by group in dtype-code order, into
one contiguous core-owned host buffer each. Each buffer is all-reduced once, so a model of hundreds of tensors
costs one operation per dtype, not one per tensor. The results are unpacked into arrays of each leaf's own
framework and device, in the same structure.

All or nothing: every argument is checked before the first operation, and with ``inplace=True`` mutable
leaves are written only after every group has committed, so a PeerLostError midway leaves the tree unchanged
and the whole call can simply be retried.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np

from . import _core, arrays
from .dtypes import DTYPE_CODES, dtype_code, op_code

_NAMES = {code: name for name, code in DTYPE_CODES.items()}


def flatten(tree: Any) -> tuple[list, Callable[[list], Any]]:
    """Leaves in a deterministic order, and the function that rebuilds the structure from new leaves."""
    jax = sys.modules.get("jax")
    if jax is not None:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        return leaves, treedef.unflatten

    leaves: list = []

    def walk(node):
        if isinstance(node, dict):
            keys = sorted(node)
            subs = [walk(node[k]) for k in keys]
            return lambda it: type(node)((k, s(it)) for k, s in zip(keys, subs))
        if isinstance(node, (list, tuple)):
            subs = [walk(v) for v in node]
            if isinstance(node, tuple) and hasattr(node, "_fields"):  # namedtuple
                return lambda it: type(node)(*(s(it) for s in subs))
            return lambda it: type(node)(s(it) for s in subs)
        if node is None:
            return lambda it: None
        leaves.append(node)
        return lambda it: next(it)

    build = walk(tree)
    return leaves, lambda new: build(iter(new))


def all_reduce_tree(comm, tree: Any, op: str = "sum", *, inplace: bool = False, tag: int = 0) -> Any:
    """See :meth:`pccl_arrays.Communicator.all_reduce_tree`."""
    leaves, unflatten = flatten(tree)
    fws = [arrays.framework_of(leaf) for leaf in leaves]
    names = [arrays.dtype_name_of(leaf) for leaf in leaves]
    groups: dict[int, list[int]] = {}
    for i, name in enumerate(names):
        op_code(op, name)  # refuse avg on integers before anything moves
        groups.setdefault(dtype_code(name), []).append(i)
    if inplace:
        for i, fw in enumerate(fws):
            if fw == "jax":
                continue  # immutable: replaced in the returned tree
            if fw == "numpy" and not leaves[i].flags.writeable:
                raise arrays.InvalidArgumentError("a leaf is read-only; pass inplace=False")

    results: list = [None] * len(leaves)
    for code in sorted(groups):
        idxs = groups[code]
        name = _NAMES[code]
        sizes = [int(np.prod(leaves[i].shape, dtype=np.int64)) for i in idxs]
        packed = arrays.new_host_buffer((sum(sizes),), name)
        itemsize = packed.nbytes // max(1, sum(sizes))
        offset = 0
        for i, n in zip(idxs, sizes):
            view, keep, _, _ = arrays.compact_host_view(leaves[i], fws[i])
            _core.memcpy(packed.data + offset * itemsize, view.ptr, n * itemsize)
            del keep
            offset += n
        reduced = arrays.new_host_buffer((sum(sizes),), name)
        comm._reduce_buffers(packed, reduced, name, op, tag)
        del packed
        flat_by_fw: dict[str, Any] = {}
        offset = 0
        for i, n in zip(idxs, sizes):
            host_fw = fws[i] if fws[i] in ("numpy", "torch", "jax") else "numpy"
            if host_fw not in flat_by_fw:
                flat_by_fw[host_fw] = arrays.wrap(reduced, name, host_fw)
            piece = flat_by_fw[host_fw][offset:offset + n].reshape(tuple(leaves[i].shape))
            results[i] = _to_leaf_device(piece, leaves[i], fws[i])
            offset += n
    if inplace:
        for i, fw in enumerate(fws):
            if fw != "jax":
                arrays.copy_back(leaves[i], results[i], fw)
                results[i] = leaves[i]
    return unflatten(results)


def _to_leaf_device(piece: Any, leaf: Any, fw: str) -> Any:
    if arrays.device_of(leaf, fw)[0] in arrays.HOST_DEVICES:
        return piece
    if fw == "torch":
        return piece.to(leaf.device)
    if fw == "cupy":
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(leaf.device.id):
            return cupy.asarray(piece)
    if fw == "jax":
        return sys.modules["jax"].device_put(piece, next(iter(leaf.devices())))
    return piece
