"""The core communicator as the package calls it: what its collectives raise passes through here.

How this works. A Communicator holds its core through a CoreCalls, which forwards everything and watches the
collectives (all_reduce, the other collectives, sync_state, optimize_topology) for two things:

- *A lost master.* After the master is lost the core makes every new collective raise PeerLostError until the
  caller has seen one fail (docs/master.md): the peers of a group lose it at different calls of a step, and each
  must see a failure at its next call so that they all redo the step (or the call) together. "Seen" is when the
  error reaches the user's code: a blocking call's raise, or ``handle.wait()`` for an async one (not the pool
  thread that ran it: the step's other async calls, issued before the user saw anything, must fail as well).
  Each failure is acknowledged with the core's loss count read when its call began, so a call that failed
  because of a loss during it does not acknowledge a newer loss. update_topology() clears it in the core.
- *A peer's metrics* (Communicator(metrics=...)): every failure counted by error class.
"""

from __future__ import annotations

import threading
import weakref
from typing import Callable, Optional

from .errors import PCCLError, PeerLostError

_COLLECTIVES = frozenset({"all_reduce", "collective", "sync_state", "optimize_topology"})
_in_pool = threading.local()  # set on a pool thread while it runs an async call (in_flight.py)


def running_async(flag: bool) -> None:
    _in_pool.active = flag


def acknowledge(error: BaseException) -> None:
    """The user's code sees `error` (handle.wait(), all_reduce_many): its loss, if any, is acknowledged."""
    ack = getattr(error, "_pccl_acknowledge", None)
    if ack is not None:
        ack()


def _acknowledge(calls_ref, generation: int) -> None:
    calls = calls_ref()
    if calls is not None:
        calls._core.acknowledge_loss(generation)


class CoreCalls:
    def __init__(self, core, on_failure: Optional[Callable[[PCCLError], None]] = None):
        self._core = core
        self.on_failure = on_failure  # the peer's metrics, if any
        self._ref = weakref.ref(self)

    def __getattr__(self, name: str):
        attr = getattr(self._core, name)
        if name not in _COLLECTIVES:
            return attr
        return lambda *args, **kw: self._call(attr, args, kw)

    def _call(self, fn, args, kw):
        generation = self._core.master_generation
        try:
            return fn(*args, **kw)
        except PCCLError as e:
            if self.on_failure is not None:
                self.on_failure(e)
            if isinstance(e, PeerLostError):
                if getattr(_in_pool, "active", False):  # acknowledged when the user's code sees it
                    e._pccl_acknowledge = lambda ref=self._ref, g=generation: _acknowledge(ref, g)
                else:
                    self._core.acknowledge_loss(generation)
            raise
