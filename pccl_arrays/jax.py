"""Collectives inside ``jax.jit``: all_reduce, broadcast and all_gather as ordered host callbacks.

    import pccl_arrays.jax as pjax

    pjax.set_communicator(comm)                    # or pass comm= to each call

    @pjax.jit                                       # jax.jit + typed errors (+ a cache keyed by the group size)
    def step(params, grads):
        g = pjax.all_reduce(grads, "avg")
        return params - 0.1 * g

    try:
        params = step(params, grads)
    except pa.PeerLostError:                        # the whole step produced nothing: retry it on every survivor
        ...

How this works. Each call stages ``jax.experimental.io_callback(..., ordered=True)`` into the traced program.
The callback receives the operand on the host (XLA copies a GPU operand to host memory and the result back to
the device: the "host path" of docs/arrays.md), calls the ordinary blocking ``Communicator.all_reduce`` /
``broadcast`` / ``all_gather`` on a NumPy view of it, and hands XLA the committed result.

- *Order.* An ordered callback carries JAX's ordered-IO effect: the compiled program threads a token from one
  such callback to the next, and successive jitted calls pass the token on, so the collectives of a peer run
  one after the other in program order, and every peer, running the same program, issues the same sequence.
  One is in flight at a time, so, as with consecutive eager calls, they may all use the same ``tag`` (default 0).
- *Never dropped, never duplicated.* The custom call is marked side-effecting and consumes the token, so XLA
  neither removes it when its result is unused (it still runs, and blocks until the peers take part) nor merges
  two identical calls (tests/test_jax_jit.py checks both). Ordered callbacks cannot be vmapped or
  differentiated: call the collective on gradients you already computed (``jax.grad`` inside, collective
  outside), not inside ``grad`` / ``vmap``.
- *Errors.* An exception in a callback aborts the program (the later callbacks do not run) and reaches the
  caller as ``jax.errors.JaxRuntimeError("INTERNAL: CpuCallback error calling callback: Traceback ...")``, its
  type lost (JAX 0.10). So the callback keeps the original error in a small registry and raises a marker
  naming it; :func:`jit` (and the :func:`typed_errors` context manager, for functions jitted otherwise) turn
  the JaxRuntimeError back into the original :class:`~pccl_arrays.errors.PCCLError` (PeerLostError,
  PCCLTimeoutError, ...) or KeyboardInterrupt, chained to nothing. JAX's own log line for a failed callback
  ("jax.io_callback failed" with a traceback) is filtered out for these markers only. Since the collectives
  commit all or nothing, every surviving peer fails at the same collective; the program is pure, so retrying
  the whole jitted call on every survivor is correct (collectives that committed before simply run again).
  Without :func:`jit` / :func:`typed_errors` a user sees the JaxRuntimeError, whose text ends with
  ``CollectiveFailed: PeerLostError: <message> [pccl_arrays.jax failure #N: ...]``.
- *One ring per call.* A peer that leaves *between* two collectives of a call is not an error to the next one:
  it simply runs on the smaller ring. Inside :func:`jit` / :func:`typed_errors` every collective of the call
  must run on the ring of the call's first one, else the call raises PeerLostError on every survivor, so no
  result mixes sums over different peers. A peer lost *before* the call's first collective is no error at all:
  the call runs on the smaller ring, as an eager call would. :func:`last_info` tells the ring size afterwards.
- *Shapes.* The result shapes are fixed when the function is traced: all_reduce and broadcast keep x's shape;
  all_gather's first axis is the group's size then (``comm.world_size``). :func:`jit` keys its compiled
  versions by that size, read again before every call, so a group that shrank or grew (between calls, at
  update_topology() or a lost peer) gets a fresh trace. If the group changed during a call, the all_gather
  result no longer fits and the call raises PeerLostError; the retry is traced for the new size. A plain
  ``jax.jit`` keeps its trace: after a group change its all_gather raises PeerLostError until retraced.
- *Which communicator.* ``comm=`` binds one when traced; without it the callback uses, when it runs, the
  communicator of :func:`set_communicator` (so a function compiled once keeps working with a communicator
  that replaced an evicted one). Ctrl-C: the callback may run on one of XLA's threads; bound the wait with
  ``timeout=``.

Why io_callback rather than an XLA FFI custom call (mpi4jax's way). An FFI handler would run the C++ core from
XLA's thread without Python, but it must be built against the XLA FFI headers of the installed jaxlib and
registered per platform, and on a GPU it would still stage through host memory, because the core moves host
buffers; it was not built or measured here. An *unordered* callback is not enough: only data dependences order
unordered callbacks, so XLA may schedule two independent ones either way round (differently on another build or
machine), and the peers' collectives would pair up wrongly.

What the ordered callback costs (2 peer processes on loopback, this 2-core machine while others loaded it,
medians): an all-reduce of 1 to 64Ki float32 takes 0.6-0.9 ms eagerly from a
NumPy array (0.7-1.4 ms from a JAX array) and 1.6-2.4 ms inside ``jit``; of 1Mi float32 (4 MiB), 6-7 ms and
10-11 ms. Alone, without a network, a jitted call with one ordered callback costs about 0.45 ms more than
without (about 0.25 ms for the ordered-effect dispatch of the call, 0.13-0.2 ms per callback), plus about
2 ms per 4 MiB operand for the copies between XLA's buffers and the callback's arrays. That is noise for a
DiLoCo outer step or a gradient all-reduce over a real network; a loop of tiny collectives is cheaper eagerly.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import logging
import re
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Optional

import jax  # the real JAX (absolute import: this module is pccl_arrays.jax)
import numpy as np
from jax.experimental import io_callback

from .call_args import check_tag
from .dtypes import dtype_code, op_code
from .errors import CommunicatorStateError, InvalidArgumentError, PeerLostError

__all__ = ["all_reduce", "broadcast", "all_gather", "jit", "typed_errors", "set_communicator", "get_communicator",
           "last_info"]

_default_comm = None  # set_communicator()


def set_communicator(comm) -> Any:
    """Makes ``comm`` the communicator of collectives called without ``comm=`` (looked up when the callback
    runs, not when traced). None clears it. Returns the previous one."""
    global _default_comm
    previous, _default_comm = _default_comm, comm
    return previous


def get_communicator(comm=None):
    """``comm``, else the one of :func:`set_communicator`; CommunicatorStateError when there is none."""
    comm = comm if comm is not None else _default_comm
    if comm is None:
        raise CommunicatorStateError("no communicator: pass comm= or call pccl_arrays.jax.set_communicator(comm)")
    return comm


_infos: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # communicator -> its last callback's info
_infos_lock = threading.Lock()


def last_info(comm=None):
    """The :class:`~pccl_arrays.AllReduceInfo` of the last collective this module's callbacks ran on ``comm``
    (default: the one of :func:`set_communicator`), whichever thread XLA ran it on (``comm.last_info`` is per
    thread); None before the first. Read it after the jitted call, e.g. for the ring size that ran it."""
    with _infos_lock:
        return _infos.get(get_communicator(comm))


# -- errors: the callback's exception, kept and raised again at the call site -------------------------------------
_MARK = "pccl_arrays.jax failure #"
_serial = itertools.count(1)
_failures: "OrderedDict[int, BaseException]" = OrderedDict()  # the last few, by serial
_failures_lock = threading.Lock()
_KEEP = 16  # failures nobody collected (a function jitted without typed_errors) are dropped after this many


class CollectiveFailed(RuntimeError):
    """What a callback raises into XLA in place of the collective's own error (which :func:`typed_errors`
    raises again). Its message, visible inside the JaxRuntimeError, names the original error."""

    def __init__(self, serial: int, error: BaseException):
        super().__init__(f"{type(error).__name__}: {error} [{_MARK}{serial}: catch it as {type(error).__name__} "
                         "with pccl_arrays.jax.jit or pccl_arrays.jax.typed_errors()]")
        self.serial = serial


def _failed(error: BaseException) -> CollectiveFailed:
    serial = next(_serial)
    with _failures_lock:
        _failures[serial] = error
        while len(_failures) > _KEEP:
            _failures.popitem(last=False)
    return CollectiveFailed(serial, error)


def _take_failure(message: str, since: int) -> Optional[BaseException]:
    """The kept error a JaxRuntimeError's message names; else the latest one recorded after serial ``since``."""
    with _failures_lock:
        for found in re.findall(re.escape(_MARK) + r"(\d+)", message):
            if int(found) in _failures:
                return _failures.pop(int(found))
        later = [s for s in _failures if s > since]
        return _failures.pop(later[-1]) if later else None


class _DropOurFailures(logging.Filter):
    """JAX logs every failed callback with its traceback; ours are raised again, typed, at the call site."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], CollectiveFailed))


logging.getLogger("jax._src.callback").addFilter(_DropOurFailures())


@contextlib.contextmanager
def typed_errors():
    """Within it, a JaxRuntimeError caused by a collective of this module becomes that collective's error
    (PeerLostError, PCCLTimeoutError, ... or KeyboardInterrupt). Put the call *and* the wait in it, since a
    program may fail while its results are awaited::

        with pccl_arrays.jax.typed_errors():
            out = jax.block_until_ready(step(x))
    """
    global _rings
    with _call_lock:  # one call at a time: the callbacks of this call check their rings against each other
        since, outer, _rings = next(_serial), _rings, {}
        try:
            yield
        except jax.errors.JaxRuntimeError as e:
            original = _take_failure(str(e), since)
            if original is None:
                raise
            original.__cause__, original.__suppress_context__ = None, True
            raise original from None
        finally:
            _rings = outer


_call_lock = threading.RLock()
_rings: Optional[dict] = None  # inside typed_errors(): communicator -> the peers of the call's first collective


def _same_ring(what: str, comm, info) -> None:
    """Inside typed_errors() (so in every call of :func:`jit`), every collective of one call must run on the
    ring of its first: a peer that left between two of them (the later ones then run on a smaller ring,
    without error) makes the call raise PeerLostError on every survivor, so no step mixes rings."""
    rings = _rings
    if rings is None or info is None:
        return
    first = rings.setdefault(id(comm), tuple(info.peers))
    if tuple(info.peers) != first:
        raise PeerLostError(f"{what} ran on peers {list(info.peers)} but this jitted call's first collective on "
                            f"{list(first)}: a peer was lost during the call; retry the call (on the smaller ring)")


# -- the collectives -------------------------------------------------------------------------------------------------
_tracing: contextvars.ContextVar = contextvars.ContextVar("pccl_arrays_jax_tracing", default=None)


def _checked(x, op: Optional[str], tag: int):
    name = str(x.dtype)
    dtype_code(name)  # UnsupportedDTypeError now, when traced, rather than from the callback
    if op is not None:
        op_code(op, name)
    check_tag(tag)
    return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)


def _stage(what: str, comm, run: Callable, x, result: jax.ShapeDtypeStruct):
    """Stages ``run(communicator, host_x)`` as an ordered callback returning ``result``'s shape and dtype."""
    def callback(arg):
        try:
            c = get_communicator(comm)
            out = run(c, np.asarray(arg))
            info = c.last_info  # read in the thread that ran the call (last_info is per thread)
            with _infos_lock:
                _infos[c] = info
            _same_ring(what, c, info)
            if tuple(out.shape) != tuple(result.shape):  # all_gather: the group is not the traced one
                raise PeerLostError(f"{what} inside jax.jit was traced for a result of shape {tuple(result.shape)} "
                                    f"but the group now gives {tuple(out.shape)}: the group changed; retry the "
                                    "call (pccl_arrays.jax.jit traces it again for the new group size)")
        except BaseException as e:  # noqa: BLE001 - every failure is raised again, typed, by typed_errors()
            raise _failed(e) from None
        return out

    return io_callback(callback, result, x, ordered=True)


def all_reduce(x, op: str = "sum", *, comm=None, tag: int = 0, timeout: Optional[float] = None,
               quantization=None):
    """``Communicator.all_reduce`` usable inside ``jax.jit``: returns a new array of x's shape and dtype.

    Args:
        x: a JAX array (or tracer) of a dtype the communicator takes, on any device (staged through the host).
        op: ``"sum"``, ``"avg"`` (floating dtypes), ``"prod"``, ``"max"`` or ``"min"``.
        comm: the communicator, bound when traced; None: the one of :func:`set_communicator`, when it runs.
        tag, timeout, quantization: as for ``Communicator.all_reduce`` (fixed when traced).
    Raises (through :func:`jit` / :func:`typed_errors`, after the jitted call): as ``Communicator.all_reduce``.
    """
    result = _checked(x, op, tag)
    return _stage("all_reduce", comm, lambda c, h: c.all_reduce(h, op, tag=tag, timeout=timeout,
                                                                 quantization=quantization), x, result)


def broadcast(x, root: int = 0, *, comm=None, tag: int = 0, timeout: Optional[float] = None):
    """``Communicator.broadcast`` usable inside ``jax.jit``: every peer gets the array of the peer at rank
    ``root`` (its position in ``comm.ring()``); x's values are not read elsewhere."""
    if isinstance(root, bool) or not isinstance(root, int) or root < 0:
        raise InvalidArgumentError(f"root must be a rank (an int >= 0), not {root!r}")
    result = _checked(x, None, tag)
    return _stage("broadcast", comm, lambda c, h: c.broadcast(h, root, tag=tag, timeout=timeout), x, result)


def all_gather(x, *, comm=None, tag: int = 0, timeout: Optional[float] = None):
    """``Communicator.all_gather`` usable inside ``jax.jit``: shape ``(group size, *x.shape)``, row r from the
    peer at rank r. The group size is read when traced (see the module docstring, "Shapes")."""
    _checked(x, None, tag)
    world = get_communicator(comm).world_size
    state = _tracing.get()
    if state is not None:  # pccl_arrays.jax.jit: key the compiled versions by this communicator's group size
        state.add(comm, world)
    result = jax.ShapeDtypeStruct((world,) + tuple(x.shape), x.dtype)
    return _stage("all_gather", comm, lambda c, h: c.all_gather(h, tag=tag, timeout=timeout), x, result)


# -- jit ---------------------------------------------------------------------------------------------------------------
class _Jitted:
    """What :func:`jit` returns: calls, waits for the results, and raises the collectives' errors typed."""

    def __init__(self, fun: Callable, jit_kwargs: dict):
        self._fun, self._jit_kwargs = fun, jit_kwargs
        self._depends: list = []  # communicators (None: the default) whose group size shaped a trace
        self._traced: list = []  # (communicator, group size) seen by the traces of the current call
        self._compiled: dict = {}  # group sizes -> the jax.jit function traced for them
        self.__wrapped__ = fun
        self.__name__ = getattr(fun, "__name__", "jitted")
        self.__doc__ = getattr(fun, "__doc__", None)

    def add(self, comm, world: int) -> None:
        """Called while tracing: the trace's shapes depend on ``comm``'s group size, ``world`` now."""
        if not any(c is comm for c in self._depends):
            self._depends.append(comm)
        self._traced.append((comm, world))

    def _key(self, traced: tuple = ()) -> tuple:
        def size(comm):
            seen = [w for c, w in traced if c is comm]
            if seen:
                return seen[0]
            return get_communicator(comm).world_size if comm is not None or _default_comm is not None else -1
        return tuple(size(c) for c in self._depends)

    def __call__(self, *args, **kwargs):
        if any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves((args, kwargs))):
            return self._fun(*args, **kwargs)  # called while an enclosing function is traced: part of its trace
        key = self._key()
        fn = self._compiled.get(key)
        if fn is None:  # a new function object: JAX caches traces per function, across jax.jit wrappers
            fn = self._compiled[key] = jax.jit(functools.wraps(self._fun)(lambda *a, **k: self._fun(*a, **k)),
                                               **self._jit_kwargs)
        self._traced, token = [], _tracing.set(self)
        try:
            with typed_errors():
                out = jax.block_until_ready(fn(*args, **kwargs))
        finally:
            _tracing.reset(token)
            if self._traced:  # traced in this call (a first trace also finds what the key depends on)
                self._compiled.setdefault(self._key(tuple(self._traced)), fn)
        return out

    def lower(self, *args, **kwargs):
        return jax.jit(self._fun, **self._jit_kwargs).lower(*args, **kwargs)


def jit(fun: Optional[Callable] = None, **jit_kwargs):
    """``jax.jit`` for functions that call this module's collectives: the call returns once the results are
    ready, and a collective's failure raises its own PCCLError (PeerLostError: retry the call on every
    survivor). Keyword arguments go to ``jax.jit``. Usable as ``@jit`` or ``@jit(donate_argnums=0)``."""
    if fun is None:
        return lambda f: _Jitted(f, jit_kwargs)
    return _Jitted(fun, jit_kwargs)
