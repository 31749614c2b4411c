"""A churn harness: a master in this process, peers as child processes that are killed, stalled and spawned.

How this works. :class:`Harness` starts a :class:`~pccl_arrays.Master` on port 0 and runs each peer as
``python -m pccl_arrays.testing TARGET MASTER INDEX ARGS OUT``, where TARGET is ``"module:function"`` importable
in the child. The function gets a :class:`PeerContext` and returns a JSON-able dict, which the child writes to
``OUT/peer{INDEX}.json``. While it runs, a peer appends one JSON line per step to ``OUT/peer{INDEX}.progress``
(the harness reads it to wait for a peer and to check progress; it survives a SIGKILL, the result file does not).

A :class:`Schedule` is a list of ``(t_seconds, action, target)`` events, ``action`` one of ``kill`` (SIGKILL),
``stall`` (SIGSTOP), ``resume`` (SIGCONT) and ``spawn``; :meth:`Schedule.random` draws one from a seed.
:meth:`Harness.run` executes it against the monotonic clock and :attr:`Harness.events` logs what was done.
The harness stops the job by creating ``OUT/STOP``; :func:`allreduce_loop` peers agree on it inside an
all-reduce, so they all stop at the same step.

No orphans: every child sets ``PR_SET_PDEATHSIG=SIGKILL`` first thing (Linux; it dies with the thread that
spawned it, and exits at once if that is already gone), the context manager SIGKILLs every child on exit
(stalled ones included), and an ``atexit`` hook does the same. Children are started without a ``preexec_fn``:
running Python between fork and exec can deadlock when the parent has threads (JAX, for one).
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import InvalidArgumentError

ACTIONS = ("kill", "stall", "resume", "spawn")
_LIVE_HARNESSES: "set[Harness]" = set()


# -- the schedule -------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Event:
    t: float  #: seconds after the start of :meth:`Harness.run`
    action: str  #: kill, stall, resume or spawn
    target: Optional[int] = None  #: the peer index (None for spawn: the next index)


class Schedule:
    """Churn events in time order: explicit ``Schedule([(t, action, target), ...])`` or :meth:`random`."""

    def __init__(self, events, duration: Optional[float] = None):
        self.events = sorted((e if isinstance(e, Event) else Event(*e) for e in events), key=lambda e: e.t)
        for e in self.events:
            if e.action not in ACTIONS:
                raise InvalidArgumentError(f"unknown action {e.action!r}; expected one of {ACTIONS}")
        self.duration = duration if duration is not None else (self.events[-1].t if self.events else 0.0)

    @classmethod
    def random(cls, seed: int, duration: float, initial: int, min_peers: int, max_peers: int, *,
               kill_rate: float = 0.1, stall_rate: float = 0.05, spawn_rate: float = 0.1, min_gap: float = 3.0,
               stall_s: float = 3.0, start: float = 1.0) -> "Schedule":
        """A reproducible schedule: the same arguments always give the same events.

        Events come at least ``min_gap`` s apart (exponential gaps of the total rate otherwise); each picks an
        action among the feasible ones, weighted by its rate, so that the live peers stay within
        [min_peers, max_peers] (a stalled one counts as live: it rejoins after its resume, which comes ``stall_s``
        later with no other event in between). Peers are numbered as the harness spawns them (0..initial-1 first).
        """
        if not 1 <= min_peers <= initial <= max_peers:
            raise InvalidArgumentError("need 1 <= min_peers <= initial <= max_peers")
        rng = random.Random(seed)
        live, next_index = list(range(initial)), initial
        events: list[Event] = []
        t = start
        total = kill_rate + stall_rate + spawn_rate
        while t < duration - min_gap:  # the last event leaves one gap before the end, to see its effect
            choices = []
            if len(live) - 1 >= min_peers:
                choices.append(("kill", kill_rate))
                if t + stall_s < duration - min_gap:
                    choices.append(("stall", stall_rate))
            if len(live) + 1 <= max_peers:
                choices.append(("spawn", spawn_rate))
            choices = [c for c in choices if c[1] > 0]
            t = round(t, 3)
            if choices:
                action = rng.choices([c[0] for c in choices], [c[1] for c in choices])[0]
                if action == "spawn":
                    events.append(Event(t, "spawn", next_index))
                    live.append(next_index)
                    next_index += 1
                elif action == "kill":
                    events.append(Event(t, "kill", live.pop(rng.randrange(len(live)))))
                else:  # the stalled peer is the only thing that happens until its resume
                    victim = live[rng.randrange(len(live))]
                    events += [Event(t, "stall", victim), Event(round(t + stall_s, 3), "resume", victim)]
                    t += stall_s
            t += max(min_gap, rng.expovariate(total) if total > 0 else duration)
        return cls(events, duration)

    def as_list(self) -> list:
        return [(e.t, e.action, e.target) for e in self.events]


# -- the harness ----------------------------------------------------------------------------------------------------
_PARENT_ENV = "PCCL_ARRAYS_TESTING_PARENT"


def _pdeathsig() -> None:  # runs first in the child
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the context manager and atexit still kill the children
        pass


class Harness:
    """Runs a master in this process and peers as child processes, and injects faults into them.

    Args:
        master_kwargs: keyword arguments of :class:`~pccl_arrays.Master` (``listen`` defaults to port 0).
        peer_target: ``"module:function"`` each peer runs (e.g. ``"pccl_arrays.testing:allreduce_loop"``).
        peer_args: a JSON-able dict every peer gets as ``ctx.args``.
        out_dir: where result, progress and log files go; also the children's working directory.
    """

    def __init__(self, master_kwargs: Optional[dict] = None, peer_target: str = "pccl_arrays.testing:allreduce_loop",
                 peer_args: Optional[dict] = None, out_dir: Optional[os.PathLike] = None):
        from .master import Master

        self.out = Path(out_dir) if out_dir is not None else Path.cwd()
        self.out.mkdir(parents=True, exist_ok=True)
        kw = {"listen": "127.0.0.1:0", "peer_timeout": 2.0, **(master_kwargs or {})}
        self.master = Master(kw.pop("listen"), **kw).start()
        self.target, self.args = peer_target, dict(peer_args or {})
        self.procs: dict[int, subprocess.Popen] = {}
        self.stalled: set[int] = set()
        self.events: list[tuple[float, str, Optional[int]]] = []  # (monotonic time, action, peer index)
        self.run_started = float("inf")  # monotonic time run() began
        _LIVE_HARNESSES.add(self)

    # -- processes ------------------------------------------------------------------------------------------------
    def spawn(self, extra_args: Optional[dict] = None) -> int:
        """Starts the next peer; returns its index."""
        i = len(self.procs)
        args = {**self.args, **(extra_args or {})}
        cmd = [sys.executable, "-m", "pccl_arrays.testing", self.target, self.master.address, str(i),
               json.dumps(args), str(self.out)]
        with open(self.out / f"peer{i}.log", "wb") as log:
            self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             cwd=self.out, env=dict(os.environ, **{_PARENT_ENV: str(os.getpid())}))
        self._log("spawn", i)
        return i

    def start(self, n: int, join_timeout: float = 60.0) -> list[int]:
        """Spawns ``n`` initial peers (they wait for each other: ``ctx.args["initial"] = n``) and waits until each
        reports that it joined."""
        idx = [self.spawn({"initial": n}) for _ in range(n)]
        for i in idx:
            self.wait_progress(i, 1, join_timeout, what="joined")
        return idx

    def kill(self, i: int) -> None:
        self._signal(i, signal.SIGKILL)
        self.procs[i].wait()
        self.stalled.discard(i)
        self._log("kill", i)

    def stall(self, i: int) -> None:
        self._signal(i, signal.SIGSTOP)
        self.stalled.add(i)
        self._log("stall", i)

    def resume(self, i: int) -> None:
        self._signal(i, signal.SIGCONT)
        self.stalled.discard(i)
        self._log("resume", i)

    def spawned_at(self, i: int) -> float:
        """Monotonic time peer i was spawned."""
        return next(t for t, a, target in self.events if a == "spawn" and target == i)

    def alive(self) -> list[int]:
        """Indices of peers whose process still runs (stalled ones included)."""
        return [i for i, p in self.procs.items() if p.poll() is None]

    def _signal(self, i: int, sig: int) -> None:
        if self.procs[i].poll() is None:
            os.kill(self.procs[i].pid, sig)

    def _log(self, action: str, target: Optional[int]) -> None:
        self.events.append((time.monotonic(), action, target))

    # -- running a schedule -----------------------------------------------------------------------------------------
    def run(self, schedule: Schedule, until: Optional[float] = None) -> None:
        """Executes the schedule's events at their times (seconds from now), then waits until ``until`` (default:
        the schedule's duration) and asks the peers to stop (:meth:`stop`)."""
        start = self.run_started = time.monotonic()
        actions: dict[str, Callable] = {"kill": self.kill, "stall": self.stall, "resume": self.resume}
        for e in schedule.events:
            _sleep_until(start + e.t)
            if e.action == "spawn":
                i = self.spawn()
                if e.target is not None and i != e.target:
                    raise RuntimeError(f"schedule expected to spawn peer {e.target}, got index {i}")
            else:
                actions[e.action](e.target)
        _sleep_until(start + (until if until is not None else schedule.duration))
        self.stop()

    def stop(self) -> None:
        """Asks every peer to finish (creates ``OUT/STOP``); resumes stalled peers so they can."""
        (self.out / "STOP").touch()
        self._log("stop", None)
        for i in sorted(self.stalled):
            self.resume(i)

    def wait_all(self, timeout: float) -> None:
        """Waits for every child to exit; SIGKILLs them all and raises if one still runs at the deadline."""
        deadline = time.monotonic() + timeout
        for i, p in self.procs.items():
            try:
                p.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill_all()
                tail = (self.out / f"peer{i}.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"peer {i} still running {timeout} s after wait_all (hang?): {tail}") from None

    def wait_progress(self, i: int, count: int, timeout: float, what: str = "steps") -> list[dict]:
        """Blocks until peer ``i`` wrote ``count`` progress lines; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.progress(i)
            if len(lines) >= count:
                return lines
            if self.procs[i].poll() is not None:
                raise RuntimeError(f"peer {i} exited ({self.procs[i].returncode}) before {what}: {self.log(i)[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"peer {i}: no {what} within {timeout} s: {self.log(i)[-3000:]}")
            time.sleep(0.02)

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()  # SIGKILL also ends a stopped process
            p.wait()

    # -- what the peers left ----------------------------------------------------------------------------------------
    def progress(self, i: int) -> list[dict]:
        """Peer i's progress lines (complete lines only)."""
        path = self.out / f"peer{i}.progress"
        if not path.exists():
            return []
        text = path.read_text()
        return [json.loads(line) for line in text.split("\n")[:-1] if line]

    def results(self) -> dict[int, dict]:
        """Result dicts of the peers that finished (killed peers have none)."""
        out = {}
        for i in self.procs:
            path = self.out / f"peer{i}.json"
            if path.exists():
                out[i] = json.loads(path.read_text())
        return out

    def log(self, i: int) -> str:
        path = self.out / f"peer{i}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.kill_all()
        self.master.stop()
        _LIVE_HARNESSES.discard(self)

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


def check_no_hang(h: Harness, catch_up_s: float = 8.0) -> None:
    """Between consecutive harness events, every peer running throughout made a step; a peer spawned or resumed
    made its first step within ``catch_up_s`` of that event (and counts as running from then on). Peers record
    steps as progress lines with ``kind="step"``; raises AssertionError naming the peer and the interval."""
    log = [e for e in h.events if e[0] >= h.run_started]
    steps = {i: [p["t"] for p in h.progress(i) if p["kind"] == "step"] for i in h.procs}
    running = {i for i in h.procs if h.spawned_at(i) < h.run_started}
    catching_up: dict[int, float] = {}  # peer -> time of its spawn / resume
    for (ta, action, target), (tb, _, _) in zip(log, log[1:]):
        if action in ("kill", "stall"):
            running.discard(target)
        elif action in ("spawn", "resume"):
            catching_up[target] = ta
        for i in sorted(running):
            assert any(ta <= t <= tb for t in steps[i]), f"peer {i} made no step in [{ta:.2f}, {tb:.2f}]: {log}"
        for i, since in list(catching_up.items()):
            first = next((t for t in steps[i] if t >= since), None)
            assert first is not None and first - since <= catch_up_s, f"peer {i} did not catch up: {log}"
            if first <= tb:
                running.add(i)
                del catching_up[i]


@atexit.register
def _kill_leftovers() -> None:
    for h in list(_LIVE_HARNESSES):
        h.kill_all()


# -- the peer side --------------------------------------------------------------------------------------------------
class PeerContext:
    """What a peer target gets: the master address, its index, the harness's args and where to write."""

    def __init__(self, master: str, index: int, args: dict, out: Path):
        self.master, self.index, self.args, self.out = master, index, args, out
        self._progress = open(out / f"peer{index}.progress", "a")

    def progress(self, **fields) -> None:
        """Appends one progress line (flushed at once: it must survive a SIGKILL right after)."""
        self._progress.write(json.dumps({"t": time.monotonic(), **fields}) + "\n")
        self._progress.flush()

    def stop_requested(self) -> bool:
        return (self.out / "STOP").exists()

    def connect(self):
        """A connected Communicator (``args``: connections, data_timeout), retrying in short waits so that a
        STOP is noticed; None when asked to stop first."""
        from . import errors
        from .communicator import Communicator

        while not self.stop_requested():
            comm = Communicator(self.master, connections=self.args.get("connections", 2), connect_timeout=5.0,
                                heartbeat_interval=0.2, master_timeout=5.0,
                                data_timeout=self.args.get("data_timeout", 10.0))
            try:
                return comm.connect(timeout=2.0)
            except errors.PCCLTimeoutError:
                comm.close()
        return None

    def rejoin(self, comm, error: BaseException):
        """After an eviction (a stall past the master's deadline) the communicator is unusable: records the
        event, closes it and joins again as a new peer (None when asked to stop)."""
        from . import errors

        self.progress(kind="rejoin", error=type(error).__name__)
        try:
            comm.close()
        except errors.PCCLError:
            pass
        return self.connect()

    def admit_initial(self, comm) -> None:
        """The peers started together (``args["initial"]``) vote each other in; then records "joined"."""
        initial = self.args.get("initial")
        while initial and comm.world_size < initial:
            if comm.are_peers_pending():
                comm.update_topology()
            else:
                time.sleep(0.005)
        self.progress(kind="joined", world=comm.world_size)


def allreduce_loop(ctx: PeerContext) -> dict:
    """The user pattern of the README under churn. Each step: ``update_topology()``; all-reduce (op max) of
    ``[step, stop]`` so that a newcomer catches up and every peer stops at the same step; all-reduce of this
    peer's contribution, 1.0 per element, so the result equals the world size. A PeerLostError restarts the step
    (every member of the ring gets it, so all restart together); a PeerEvictedError (after a stall) rejoins as a
    new Communicator. Records ``[step, world, value, uniform]`` per step.

    Args (ctx.args): ``initial`` (peers started together wait until that many joined), ``max_steps``, ``n``
    (elements per all-reduce, default 1024), ``connections`` (default 2), ``data_timeout`` (default 10).
    """
    import numpy as np

    from . import errors

    a = ctx.args
    n, max_steps = a.get("n", 1024), a.get("max_steps", 1 << 62)
    counts = {"rejoins": 0, "peer_lost": 0, "too_few": 0}
    records: list = []

    comm = ctx.connect()
    if comm is None:
        return {"records": records, **counts, "stopped_before_join": True}
    initial = a.get("initial")
    ctx.admit_initial(comm)
    vote = initial is not None  # a newcomer was admitted inside the others' vote of this step: no vote
    step = 0
    while True:
        try:
            if vote:
                comm.update_topology()
            vote = True
            stop = 1 if (ctx.stop_requested() or step >= max_steps) else 0
            agreed = comm.all_reduce(np.array([step, stop], dtype=np.int64), "max")
            step, stop = int(agreed[0]), int(agreed[1])
            if stop:
                break
            r = comm.all_reduce(np.ones(n, dtype=np.float64), "sum")
        except errors.PeerLostError:
            counts["peer_lost"] += 1
            continue
        except errors.TooFewPeersError:
            counts["too_few"] += 1
            time.sleep(0.05)
            continue
        except (errors.PeerEvictedError, errors.MasterUnreachableError) as e:
            counts["rejoins"] += 1
            comm = ctx.rejoin(comm, e)
            if comm is None:
                return {"records": records, **counts}
            vote = False
            continue
        rec = [step, comm.last_info.world_size, float(r[0]), bool(np.all(r == r[0]))]
        records.append(rec)
        ctx.progress(kind="step", step=step, world=rec[1], value=rec[2], uniform=rec[3])
        step += 1
    comm.close()
    return {"records": records, **counts}


def _main(argv: list[str]) -> int:
    """``python -m pccl_arrays.testing TARGET MASTER INDEX ARGS_JSON OUT_DIR``: runs one peer."""
    _pdeathsig()
    if os.environ.get(_PARENT_ENV) and os.getppid() != int(os.environ[_PARENT_ENV]):
        return 1  # the harness died before we could ask to die with it
    target, master, index, args, out = argv
    ctx = PeerContext(master, int(index), json.loads(args), Path(out))
    module, _, func = target.partition(":")
    try:
        result: Any = getattr(importlib.import_module(module), func)(ctx)
        status = 0
    except BaseException as e:  # the harness reads the failure from the result file
        result = {"error": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()}
        status = 1
    result = dict(result or {}, index=ctx.index, finished_at=time.monotonic())
    tmp = ctx.out / f"peer{ctx.index}.json.tmp"
    tmp.write_text(json.dumps(result))
    tmp.rename(ctx.out / f"peer{ctx.index}.json")
    return status


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
