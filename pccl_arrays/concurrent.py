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
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait, FIRST_COMPLETED
from typing import Any, Optional, Sequence

from .errors import InvalidArgumentError, PCCLError

AUTO_TAG_BASE = 1 << 40  # automatic tags stay clear of small user tags


class AllReduceHandle:
    """An all-reduce in flight. ``wait()`` returns its result (or raises its error); ``done()`` polls."""

    def __init__(self, future: Future, tag: int):
        self._future = future
        self.tag = tag

    def done(self) -> bool:
        return self._future.done()

    def wait(self, timeout: Optional[float] = None) -> Any:
        """The result array; raises the operation's PCCLError, or TimeoutError if ``timeout`` passes first."""
        result, _info = self._future.result(timeout)
        return result

    @property
    def info(self):
        """The AllReduceInfo once the operation committed (None before)."""
        if not self._future.done() or self._future.exception() is not None:
            return None
        return self._future.result()[1]


class Concurrency:
    """The per-communicator part: a thread pool, the tags in flight, the automatic tag counter."""

    def __init__(self, comm, max_threads: int = 32):
        self._comm = comm
        self._max_threads = max_threads
        self._pool: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()
        self._tags: set[int] = set()
        self._next = AUTO_TAG_BASE

    def restart_auto_tags(self) -> None:
        """Called with nothing in flight at the group's synchronisation points (see the module docstring)."""
        with self._lock:
            self._next = AUTO_TAG_BASE

    def submit(self, x: Any, op: str, out: Any, tag: Optional[int], quantization) -> AllReduceHandle:
        with self._lock:
            if tag is None:
                tag = self._next
                self._next += 1
            if not isinstance(tag, int) or not 0 <= tag < 2**64:
                raise InvalidArgumentError(f"tag must be an int in [0, 2**64), not {tag!r}")
            if tag in self._tags:
                raise InvalidArgumentError(f"tag {tag} is already in flight on this communicator")
            self._tags.add(tag)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_threads, thread_name_prefix="pccl-arrays")
        try:
            future = self._pool.submit(self._run, x, op, out, tag, quantization)
        except BaseException:
            self._release(tag)
            raise
        return AllReduceHandle(future, tag)

    def _run(self, x, op, out, tag, quantization):
        try:
            return self._comm.all_reduce(x, op, out, tag=tag, quantization=quantization, return_info=True)
        finally:
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

    def many(self, arrays: Sequence[Any], op: str, outs, max_in_flight: int, retries: int, tag_base: int,
             quantization) -> list:
        if max_in_flight < 1:
            raise InvalidArgumentError("max_in_flight must be at least 1")
        if outs is not None and len(outs) != len(arrays):
            raise InvalidArgumentError("outs must have one entry per array")
        results: list = [None] * len(arrays)
        attempts = [0] * len(arrays)
        todo = list(range(len(arrays)))
        running: dict[Future, int] = {}
        while todo or running:
            while todo and len(running) < max_in_flight:
                i = todo.pop(0)
                attempts[i] += 1
                handle = self.submit(arrays[i], op, None if outs is None else outs[i], tag_base + i, quantization)
                running[handle._future] = i
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                i = running.pop(fut)
                err = fut.exception()
                if err is None:
                    results[i] = fut.result()[0]
                elif isinstance(err, PCCLError) and err.retryable and attempts[i] <= retries:
                    todo.append(i)  # run it again on the smaller ring; committed arrays stay as they are
                else:
                    for other in running:  # let the others end before raising, so no thread outlives the call
                        other.exception()
                    raise err
        return results
