"""Shared state: named arrays of any framework plus a revision, kept bit-identical on every peer of a group.

How a sync works (``Communicator.sync_shared_state``; docs/shared_state.md has the rules in full):

1. Every peer hashes each entry (64-bit content hash, C++, several GB/s; device arrays are hashed through a
   host copy made by their framework) and announces (revision, strategy, names, dtypes, shapes, hashes).
2. The master elects the content held by the most current-revision peers. Peers that already hold the group's
   state outrank newcomers: a peer that has not completed a sync of this group never wins against one that has.
3. Peers whose content differs fetch only the entries that differ, their bytes striped over every holder of
   the winning content, and check each entry's hash on arrival.
4. The master commits the sync once every receiver has verified its bytes; only then are they copied into the
   arrays (JAX arrays, being immutable, are replaced in the state). A failed sync changes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator, Mapping

from . import _core, arrays
from .dtypes import dtype_code
from .errors import InvalidArgumentError

STRATEGIES: dict = dict(_core.CODES["sync_strategy"])


class SharedState:
    """Named arrays (torch, JAX, CuPy or NumPy, any supported dtype) and a revision counter.

    Args:
        arrays: ``{name: array}``; every peer of a group must use the same names, dtypes and shapes.
        revision: the caller's step counter. Between two syncs a peer may advance it by at most one; a peer
            behind the group catches up (its revision becomes the group's).
        allow_content_inequality: names whose content may legitimately differ between peers holding state
            (e.g. per-peer RNG state or statistics). They are neither compared nor moved between such peers; a
            peer that holds no state yet (its first sync of the group, or ``receive_only``) receives them whole
            from the most senior holder.

    After a sync, read the arrays from the state (``state["w"]``): mutable arrays are updated in place, JAX
    arrays are replaced by new ones.
    """

    def __init__(self, arrays: Mapping[str, Any], revision: int = 0, *,
                 allow_content_inequality: Iterable[str] = ()):
        if not isinstance(arrays, Mapping) or not arrays:
            raise InvalidArgumentError("SharedState takes a non-empty mapping {name: array}")
        self._arrays: dict[str, Any] = {}
        for name, x in arrays.items():
            self[name] = x
        self.revision = revision
        tolerant = frozenset(allow_content_inequality)
        unknown = sorted(tolerant - set(self._arrays))
        if unknown:
            raise InvalidArgumentError(f"allow_content_inequality names unknown entries: {unknown}")
        self._tolerant = tolerant

    @property
    def revision(self) -> int:
        return self._revision

    @revision.setter
    def revision(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
            raise InvalidArgumentError(f"revision must be an int in [0, 2**64), not {value!r}")
        self._revision = value

    @property
    def allow_content_inequality(self) -> frozenset:
        return self._tolerant

    def __getitem__(self, name: str) -> Any:
        return self._arrays[name]

    def __setitem__(self, name: str, x: Any) -> None:
        """Replaces an entry's array (e.g. with a JAX update's result); new names are refused."""
        if not isinstance(name, str) or not name or len(name.encode("utf-8", "surrogatepass")) > 4096:
            raise InvalidArgumentError(f"entry names are non-empty str of at most 4096 UTF-8 bytes, not {name!r}")
        if hasattr(self, "_tolerant") and name not in self._arrays:
            raise InvalidArgumentError(f"'{name}' is not an entry of this state; make a new SharedState to add one")
        fw = arrays.framework_of(x)
        dtype_code(arrays.dtype_name_of(x))  # UnsupportedDTypeError names the dtype
        if fw == "numpy" and not x.flags.writeable:
            raise InvalidArgumentError(f"entry '{name}' is a read-only NumPy array: a sync may need to write it")
        self._arrays[name] = x

    def __contains__(self, name: object) -> bool:
        return name in self._arrays

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._arrays))

    def __len__(self) -> int:
        return len(self._arrays)

    def keys(self) -> list[str]:
        return sorted(self._arrays)

    def items(self) -> list[tuple[str, Any]]:
        return [(k, self._arrays[k]) for k in sorted(self._arrays)]

    @property
    def arrays(self) -> dict[str, Any]:
        """A new dict of the current arrays, in name order."""
        return dict(self.items())

    def hashes(self) -> dict[str, int]:
        """Each entry's 64-bit content hash, as a sync computes it."""
        return {name: _core.content_hash(view.ptr, view.nbytes) for name, (view, *_rest) in self._views().items()}

    def _views(self) -> dict[str, tuple]:
        out = {}
        for name in sorted(self._arrays):
            x = self._arrays[name]
            fw = arrays.framework_of(x)
            view, host, host_fw, on_device = arrays.compact_host_view(x, fw)
            out[name] = (view, host, host_fw, fw, on_device)
        return out


@dataclasses.dataclass(frozen=True)
class SyncInfo:
    """What one shared-state sync did on this peer. Byte counts are state payload bytes."""

    revision: int  #: the group's revision after the sync (now also the state's)
    fetched: tuple  #: names of the entries this peer received
    bytes_sent: int  #: bytes this peer sent to peers that fetched from it
    bytes_received: int  #: bytes this peer received
    sent_to: dict  #: peer id -> bytes sent to it
    received_from: dict  #: peer id -> bytes received from it (every holder sends a share)
    seconds: float  #: wall time of the sync
    sync_id: int  #: the master's id of the sync


def sync(core: Any, state: SharedState, strategy: str, timeout: float = -1.0) -> SyncInfo:
    """The body of ``Communicator.sync_shared_state`` (see there)."""
    if not isinstance(state, SharedState):
        raise InvalidArgumentError(f"sync_shared_state takes a SharedState, not {type(state).__name__}")
    if strategy not in STRATEGIES:
        raise InvalidArgumentError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    views = state._views()
    names = list(views)
    entries, ptrs = [], []
    for name in names:
        view, *_ = views[name]
        x = state[name]
        entries.append({"name": name, "dtype": view.code, "shape": [int(d) for d in x.shape],
                        "nbytes": view.nbytes, "hash": _core.content_hash(view.ptr, view.nbytes),
                        "tolerate": int(name in state.allow_content_inequality)})
        ptrs.append(view.ptr)
    r = core.sync_state(entries=entries, data_ptrs=ptrs, revision=state.revision, strategy=STRATEGIES[strategy],
                        timeout=timeout)
    fetched = []
    for index, buf in zip(r["fetched"], r["buffers"]):
        name = names[index]
        view, _host, host_fw, fw, _on_device = views[name]
        x = state[name]
        if fw == "jax":
            state._arrays[name] = arrays.wrap(buf, view.dtype_name, "jax", like=x)
        else:
            arrays.copy_back(x, arrays.wrap(buf, view.dtype_name, host_fw if fw != "cupy" else "numpy"), fw)
        fetched.append(name)
    state.revision = r["revision"]
    return SyncInfo(r["revision"], tuple(fetched), r["bytes_sent"], r["bytes_received"], dict(r["sent_to"]),
                    dict(r["received_from"]), r["seconds"], r["sync_id"])
