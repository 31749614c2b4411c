"""Collectives in flight at once: async handles and a many-array all-reduce with retries.

How this works. Each async all-reduce runs the ordinary blocking all_reduce on a thread of the communicator's
pool (the core releases the GIL while it waits, so Python keeps computing). Operations are told apart by tags:
every peer must issue the same operations with the same tags, in any order; the master matches them by tag and
gives each running one its own connection slot, so concurrent operations never share a connection and one
cannot starve another. Without an explicit tag, a counter assigns one, which agrees across peers as long as
they issue their async calls in the same order. The counter restarts at every update_topology() and
sync_shared_state() (points every peer of the group passes with nothing in flight), so a newcomer, whose
counter starts fresh, agrees with peers that have run for hours.

all_reduce_many keeps at most ``max_in_flight`` operations running; an array whose operation fails with a
retryable error (a peer was lost) is run again, with the same tag, on the smaller ring, and arrays that already
committed are not touched again. A result is returned only for an operation that committed on every peer.

Ctrl-C in ``handle.wait()`` cannot reach the operation's thread, so the communicator leaves the job (its
operations in flight fail at once, and the others see a lost peer) before the KeyboardInterrupt goes on; and
at interpreter exit every communicator still open is closed before the pool's threads are joined, so an
operation nobody waits for never holds the exit up.
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor, wait, FIRST_COMPLETED
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Optional, Sequence

from . import core_calls
from .call_args import check_tag
from .errors import CommunicatorStateError, InvalidArgumentError, PCCLError, PCCLTimeoutError

AUTO_TAG_BASE = 1 << 40  # automatic tags stay clear of small user tags


class AllReduceHandle:
    """A collective in flight (an all-reduce, broadcast, ...). ``wait()`` returns its result (or raises its
    error); ``done()`` polls."""

    def __init__(self, future: Future, tag: int, on_interrupt=None, what: str = "all-reduce"):
        self._future = future
        self.tag = tag
        self._on_interrupt = on_interrupt  # on Ctrl-C, with the reason: the communicator leaves the job
        self._what = what

    def done(self) -> bool:
        return self._future.done()

    def wait(self, timeout: Optional[float] = None) -> Any:
        """The result array; raises the operation's PCCLError, or PCCLTimeoutError (also a TimeoutError) if
        ``timeout`` seconds pass first (the operation goes on: wait again or close the communicator).

        Ctrl-C here makes the communicator leave the job (the operation cannot be interrupted from this
        thread), then raises KeyboardInterrupt.
        """
        try:
            result, _info = self._future.result(timeout)
        except PCCLError as e:
            core_calls.acknowledge(e)  # the user's code sees it now (a lost master: core_calls.py)
            raise
        except FutureTimeout:
            if self._future.done():  # the operation's own PCCLTimeoutError (a TimeoutError too), not this wait's
                raise
            raise PCCLTimeoutError(f"{self._what} tag {self.tag} did not finish within {timeout} s; it is still "
                                   "running (wait again, or close() the communicator to stop it)") from None
        except KeyboardInterrupt:
            if self._on_interrupt is not None:
                self._on_interrupt(f"interrupted (KeyboardInterrupt) in handle.wait() of {self._what} tag {self.tag}")
            raise
        finally:
            # The operation's error, raised here, keeps this frame in its traceback; this frame held the handle,
            # the handle its future and the future the error: a cycle that kept the failed operation's arrays
            # until the cycle collector ran (megabytes per lost peer in a long run).
            self = None  # noqa: F841
        return result

    @property
    def info(self):
        """The operation's AllReduceInfo once it committed (None before)."""
        if not self._future.done() or self._future.exception() is not None:
            return None
        return self._future.result()[1]


class Concurrency:
    """The per-communicator part: a thread pool, the tags in flight, the automatic tag counter."""

    def __init__(self, comm, on_interrupt, max_threads: int = 32):
        # The communicator owns this object; a weak reference back keeps them out of a reference cycle, so that
        # a dropped communicator (a peer that rejoined with a new one) is freed at once with its threads and
        # buffers, not at some later run of the cycle collector. Handles hold it strongly.
        self._comm_ref = weakref.ref(comm)
        self._on_interrupt = on_interrupt  # a weakref.WeakMethod of the communicator's _abandon
        self._max_threads = max_threads
        self._pool: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()
        self._tags: set[int] = set()
        self._next = AUTO_TAG_BASE

    @property
    def _comm(self):
        comm = self._comm_ref()
        if comm is None:
            raise CommunicatorStateError("the communicator of this operation was garbage-collected")
        return comm

    def restart_auto_tags(self) -> None:
        """Called with nothing in flight at the group's synchronisation points (see the module docstring)."""
        with self._lock:
            self._next = AUTO_TAG_BASE

    def submit(self, x: Any, op: str, out: Any, tag: Optional[int], quantization,
               timeout: Optional[float] = None) -> AllReduceHandle:
        def call(t: int):
            comm = self._comm
            result = comm.all_reduce(x, op, out, tag=t, quantization=quantization, timeout=timeout)
            return result, comm.last_info  # this pool thread's own call

        return self.submit_call(call, tag)

    def submit_call(self, call, tag: Optional[int], what: str = "all-reduce") -> AllReduceHandle:
        """Runs ``call(tag)`` (which returns ``(result, info)``) on the pool with a tag of its own."""
        with self._lock:
            if tag is None:
                tag = self._next
                self._next += 1
            check_tag(tag)
            if tag in self._tags:
                raise InvalidArgumentError(f"tag {tag} is already in flight on this communicator")
            self._tags.add(tag)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_threads, thread_name_prefix="pccl-arrays")
        try:
            future = self._pool.submit(self._run, call, tag)
        except BaseException:
            self._release(tag)
            raise
        return AllReduceHandle(future, tag, self._on_interrupt(), what)  # the handle holds the communicator

    def _run(self, call, tag):
        core_calls.running_async(True)
        try:
            return call(tag)
        finally:
            core_calls.running_async(False)
            self._release(tag)

    def in_flight(self) -> int:
        """Async operations submitted and not yet ended (counted from submit, before they reach the master)."""
        with self._lock:
            return len(self._tags)

    def _release(self, tag: int) -> None:
        with self._lock:
            self._tags.discard(tag)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def many(self, arrays: Sequence[Any], op: str, outs, max_in_flight: int, retries: int, tag_base: Optional[int],
             quantization, timeout: Optional[float] = None) -> list:
        if max_in_flight < 1:
            raise InvalidArgumentError("max_in_flight must be at least 1")
        if outs is not None and len(outs) != len(arrays):
            raise InvalidArgumentError("outs must have one entry per array")
        if tag_base is None:  # the next automatic tags, one per array, reserved at once
            with self._lock:
                tag_base, self._next = self._next, self._next + len(arrays)
        results: list = [None] * len(arrays)
        attempts = [0] * len(arrays)
        todo = list(range(len(arrays)))
        running: dict[Future, int] = {}
        while todo or running:
            while todo and len(running) < max_in_flight:
                i = todo.pop(0)
                attempts[i] += 1
                handle = self.submit(arrays[i], op, None if outs is None else outs[i], tag_base + i, quantization, timeout)
                running[handle._future] = i
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                i = running.pop(fut)
                err = fut.exception()
                if err is None:
                    results[i] = fut.result()[0]
                elif isinstance(err, PCCLError) and err.retryable and attempts[i] <= retries:
                    core_calls.acknowledge(err)  # seen: its retry, with the same tag, goes to the master
                    todo.append(i)  # run it again on the smaller ring; committed arrays stay as they are
                else:
                    for other in running:  # let the others end before raising, so no thread outlives the call
                        other.exception()
                    core_calls.acknowledge(err)
                    try:
                        raise err
                    finally:  # the error's traceback holds this frame: no cycle through its locals (see wait())
                        err = fut = finished = handle = None  # noqa: F841
        return results


_open: "weakref.WeakSet" = weakref.WeakSet()  # communicators not yet closed


def track_open(comm) -> None:
    _open.add(comm)


def untrack_open(comm) -> None:
    _open.discard(comm)


def _close_at_exit() -> None:
    for comm in list(_open):
        try:
            comm.close()
        except Exception:  # exiting: nothing to report it to
            pass


# threading runs these (last registered first) before it joins non-daemon threads, so before the executor's
# own exit hook waits for its workers.
threading._register_atexit(_close_at_exit)
