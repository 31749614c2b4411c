"""All-reduce of a whole pytree (a JAX pytree, or nested dicts / lists / tuples of torch, NumPy or CuPy arrays).

How this works. The tree is flattened in one canonical order, whatever frameworks the process has imported:
optree's rules, which are also JAX's: a dict (and a defaultdict) by sorted key, an OrderedDict in its own key
order (a torch ``state_dict()`` keeps its module order, the same on every peer), lists, tuples and namedtuples
by position, ``None`` as an empty subtree. A node optree does not know but JAX does (a custom JAX pytree such
as a flax struct) is flattened by JAX, when JAX is loaded. The structure (every leaf's path, dtype and shape) is
summarised in a 64-bit fingerprint that travels in every operation's descriptor, so peers whose trees differ
(renamed keys, another key order, a leaf of another shape) are refused on every peer instead of summing the
wrong leaves together.

The leaves are grouped by dtype and packed, group by group in dtype-code order, into one contiguous core-owned
host buffer each. Each buffer is all-reduced once, so a model of hundreds of tensors costs one operation per
dtype, not one per tensor. The results are unpacked into arrays of each leaf's own framework and device, in
the same structure.

All or nothing: every argument is checked before the first operation, and with ``inplace=True`` mutable
leaves are written only after every group has committed, so a PeerLostError midway leaves the tree unchanged
and the whole call can simply be retried.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any, Callable, NamedTuple

import numpy as np
import optree

from . import _core, arrays
from .dtypes import DTYPE_CODES, dtype_code, op_code

_NAMES = {code: name for name, code in DTYPE_CODES.items()}
_SUMMARY_CHARS = 400  # of the structure's description, in mismatch messages


class Flat(NamedTuple):
    leaves: list  #: the leaves, in the canonical order
    paths: list  #: each leaf's path, as text
    unflatten: Callable[[list], Any]  #: rebuilds the tree from new leaves


def _is_array(x: Any) -> bool:
    return hasattr(x, "__dlpack__") or isinstance(x, np.ndarray)


def flatten(tree: Any) -> Flat:
    """The leaves of ``tree`` in the canonical order (see the module docstring), their paths, and the function
    that rebuilds the tree from new leaves."""
    paths, leaves, spec = optree.tree_flatten_with_path(tree, none_is_leaf=False)
    jax = sys.modules.get("jax")
    out_leaves: list = []
    out_paths: list = []
    rebuild: list = []  # per optree leaf: None (a leaf) or (JAX treedef, number of its leaves)
    for path, leaf in zip(paths, leaves):
        prefix = "".join(f"[{k!r}]" for k in path)
        if jax is not None and not _is_array(leaf):
            sub, treedef = jax.tree_util.tree_flatten_with_path(leaf)
            if treedef.num_nodes > 1:  # a JAX custom node: its own leaves, in JAX's order
                out_paths += [prefix + jax.tree_util.keystr(p) for p, _ in sub]
                out_leaves += [x for _, x in sub]
                rebuild.append((treedef, len(sub)))
                continue
        out_paths.append(prefix or "<root>")
        out_leaves.append(leaf)
        rebuild.append(None)

    def unflatten(new: list) -> Any:
        it = iter(new)
        top = [next(it) if r is None else r[0].unflatten([next(it) for _ in range(r[1])]) for r in rebuild]
        return optree.tree_unflatten(spec, top)

    return Flat(out_leaves, out_paths, unflatten)


def structure_of(flat: Flat) -> tuple[int, str]:
    """A 64-bit fingerprint of the tree's structure (leaf paths, dtypes, shapes) and a readable summary of it."""
    parts = [f"{p}: {arrays.dtype_name_of(x)}{tuple(int(d) for d in x.shape)}" for p, x in zip(flat.paths, flat.leaves)]
    text = "{" + ", ".join(parts) + "}"
    fingerprint = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") or 1
    if len(text) > _SUMMARY_CHARS:
        text = text[:_SUMMARY_CHARS] + f"... ({len(parts)} leaves)"
    return fingerprint, text


def all_reduce_tree(pool, reduce_buffers, tree: Any, op: str = "sum", *, inplace: bool = False, tag: int = 0,
                    timeout: float | None = None, quantization=None) -> Any:
    """See :meth:`pccl_arrays.Communicator.all_reduce_tree`: packs each dtype's leaves into a buffer of
    ``pool`` and reduces it with ``reduce_buffers(src, dst, name, op, tag, structure, timeout, quantization)``."""
    flat = flatten(tree)
    leaves = flat.leaves
    fws = [arrays.framework_of(leaf) for leaf in leaves]
    structure = structure_of(flat)
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
                raise arrays.InvalidArgumentError("a leaf is read-only; pass out=None")

    results: list = [None] * len(leaves)
    for code in sorted(groups):
        idxs = groups[code]
        name = _NAMES[code]
        sizes = [int(np.prod(leaves[i].shape, dtype=np.int64)) for i in idxs]
        packed = arrays.new_host_buffer((sum(sizes),), name, pool)
        itemsize = packed.nbytes // max(1, sum(sizes))
        offset = 0
        for i, n in zip(idxs, sizes):
            view, keep, _, _ = arrays.compact_host_view(leaves[i], fws[i])
            _core.memcpy(packed.data + offset * itemsize, view.ptr, n * itemsize)
            del keep
            offset += n
        reduced = arrays.new_host_buffer((sum(sizes),), name, pool)
        reduce_buffers(packed, reduced, name, op, tag, structure, timeout, quantization)
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
    return flat.unflatten(results)


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
