"""The churn harness: a master in this process (or a child process that is killed and restarted), peers as child
processes that are killed, stalled, spawned, asked to leave, or wiped out together.

How this works. :class:`Harness` starts a :class:`~pccl_arrays.Master` on port 0 (with ``master_process=True``
a :class:`~pccl_arrays.testing.master_process.MasterProcess` instead, which the schedule's ``master_kill`` and
``master_restart`` SIGKILL and start again on the same address) and runs each peer as
``python -m pccl_arrays.testing TARGET MASTER INDEX ARGS OUT`` (peer.py), where TARGET is ``"module:function"``
importable in the child. The function gets a :class:`~pccl_arrays.testing.PeerContext` and returns a JSON-able
dict, which the child writes to ``OUT/peer{INDEX}.json``. While it runs, a peer appends one JSON line per step
to ``OUT/peer{INDEX}.progress`` (records.py: the harness reads it to wait for a peer and to check progress; it
survives a SIGKILL, the result file does not).

:meth:`Harness.run` executes a :class:`~pccl_arrays.testing.Schedule` against the monotonic clock and
:attr:`Harness.events` logs what was done. The harness stops the job by creating ``OUT/STOP``.

No orphans: every child dies with this process (processes.spawn_child), the context manager SIGKILLs every
child on exit (stalled ones included), and an ``atexit`` hook does the same.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from .master_process import MasterProcess
from .processes import kill_and_reap, spawn_child
from .records import read_progress, read_result
from .schedule import Schedule

_LIVE_HARNESSES: "set[Harness]" = set()


class Harness:
    """Runs a master in this process and peers as child processes, and injects faults into them.

    Args:
        master_kwargs: keyword arguments of :class:`~pccl_arrays.Master` (``listen`` defaults to port 0).
        peer_target: ``"module:function"`` each peer runs (e.g. ``"pccl_arrays.testing:allreduce_loop"``).
        peer_args: a JSON-able dict every peer gets as ``ctx.args``.
        out_dir: where result, progress and log files go; also the children's working directory.
        master_process: run the master as a child process (``master_kwargs``: only ``peer_timeout`` and
            ``handshake_timeout``), so that :meth:`kill_master` and :meth:`restart_master` can end and restart it;
            :attr:`master` is then the :class:`MasterProcess`.
        master_host, master_prefix: where the master process listens and what goes before its command line
            (``master_process=True``), e.g. a network namespace's address and ``ip netns exec NS``.
        placement: ``placement(i)`` for peer index i: a dict with ``prefix`` (put before its command line) and
            ``args`` (added to its ``ctx.args``), e.g. to start it in a network namespace behind NAT.
    """

    def __init__(self, master_kwargs: Optional[dict] = None, peer_target: str = "pccl_arrays.testing:allreduce_loop",
                 peer_args: Optional[dict] = None, out_dir: Optional[os.PathLike] = None,
                 master_process: bool = False, master_host: str = "127.0.0.1", master_prefix: Sequence[str] = (),
                 placement: Optional[Callable[[int], dict]] = None):
        from ..master import Master

        self.out = Path(out_dir) if out_dir is not None else Path.cwd()
        self.out.mkdir(parents=True, exist_ok=True)
        kw = {"listen": "127.0.0.1:0", "peer_timeout": 2.0, **(master_kwargs or {})}
        if master_process:
            self.master = MasterProcess(self.out, kw["peer_timeout"], kw.get("handshake_timeout", 5.0), master_host,
                                        master_prefix)
            self.master.start()
        else:
            self.master = Master(kw.pop("listen"), **kw).start()
        self.target, self.args = peer_target, dict(peer_args or {})
        self.placement = placement or (lambda i: {})
        self.procs: dict[int, subprocess.Popen] = {}
        self.stalled: set[int] = set()
        self.events: list[tuple[float, str, Optional[int]]] = []  # (monotonic time, action, peer index)
        self.run_started = float("inf")  # monotonic time run() began
        _LIVE_HARNESSES.add(self)

    # -- processes ------------------------------------------------------------------------------------------------
    def spawn(self, extra_args: Optional[dict] = None, _at: Optional[float] = None) -> int:
        """Starts the next peer; returns its index."""
        i = len(self.procs)
        place = self.placement(i)
        args = {**self.args, **place.get("args", {}), **(extra_args or {})}
        cmd = [*place.get("prefix", ()), sys.executable, "-m", "pccl_arrays.testing", self.target, str(self.master.address), str(i),
               json.dumps(args), str(self.out)]
        with open(self.out / f"peer{i}.log", "wb") as log:
            self.procs[i] = spawn_child(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.out)
        self._log("spawn", i, _at)
        return i

    def start(self, n: int, join_timeout: float = 60.0) -> list[int]:
        """Spawns ``n`` initial peers (they wait for each other: ``ctx.args["initial"] = n``) and waits until each
        reports that it joined."""
        idx = [self.spawn({"initial": n}) for _ in range(n)]
        for i in idx:
            self.wait_progress(i, 1, join_timeout, what="joined")
        return idx

    def kill(self, i: int, _at: Optional[float] = None) -> None:
        self._signal(i, signal.SIGKILL)
        self.procs[i].wait()
        self.stalled.discard(i)
        self._log("kill", i, _at)

    def leave(self, i: int) -> None:
        """Asks peer i to leave gracefully (creates ``OUT/LEAVE{i}``): it closes its communicator at its next step
        (:meth:`PeerContext.leave_requested`) and exits normally."""
        (self.out / f"LEAVE{i}").touch()
        self._log("leave", i)

    def wipe(self, newcomers: int) -> list[int]:
        """Kills every live peer and spawns ``newcomers`` new ones, logged as one moment (every event of it has the
        same time): the group's state dies with its holders and the newcomers must restart it. Returns their
        indices."""
        at = time.monotonic()
        self._log("wipe", newcomers, at)
        for i in self.alive():
            self.kill(i, _at=at)
        return [self.spawn(_at=at) for _ in range(newcomers)]

    def stall(self, i: int) -> None:
        self._signal(i, signal.SIGSTOP)
        self.stalled.add(i)
        self._log("stall", i)

    def resume(self, i: int) -> None:
        self._signal(i, signal.SIGCONT)
        self.stalled.discard(i)
        self._log("resume", i)

    def kill_master(self) -> None:
        """SIGKILLs the master process (``master_process=True``); logged when it is gone."""
        self.master.kill()
        self._log("master_kill", None)

    def restart_master(self, _target=None) -> None:
        """Starts the master process again on its address; logged when it listens (the moment the peers can
        reach it)."""
        self.master.start()
        self._log("master_restart", None)

    def master_outages(self) -> list[tuple[float, float]]:
        """(killed, listening again) for every master kill (the end is +inf if it never came back)."""
        out, down = [], None
        for t, action, _ in self.events:
            if action == "master_kill":
                down = t
            elif action == "master_restart" and down is not None:
                out.append((down, t))
                down = None
        return out + ([(down, float("inf"))] if down is not None else [])

    def spawned_at(self, i: int) -> float:
        """Monotonic time peer i was spawned."""
        return next(t for t, a, target in self.events if a == "spawn" and target == i)

    def alive(self) -> list[int]:
        """Indices of peers whose process still runs (stalled ones included)."""
        return [i for i, p in self.procs.items() if p.poll() is None]

    def _signal(self, i: int, sig: int) -> None:
        if self.procs[i].poll() is None:
            os.kill(self.procs[i].pid, sig)

    def _log(self, action: str, target: Optional[int], at: Optional[float] = None) -> None:
        self.events.append((time.monotonic() if at is None else at, action, target))

    # -- running a schedule -----------------------------------------------------------------------------------------
    def run(self, schedule: Schedule, until: Optional[float] = None) -> None:
        """Executes the schedule's events at their times (seconds from now), then waits until ``until`` (default:
        the schedule's duration) and asks the peers to stop (:meth:`stop`)."""
        start = self.run_started = time.monotonic()
        actions: dict[str, Callable] = {"kill": self.kill, "stall": self.stall, "resume": self.resume,
                                        "leave": self.leave, "wipe": self.wipe,
                                        "master_kill": lambda _: self.kill_master(),
                                        "master_restart": self.restart_master}
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
        kill_and_reap(self.procs.values(), timeout=None)  # SIGKILL also ends a stopped process

    # -- what the peers left ----------------------------------------------------------------------------------------
    def progress(self, i: int) -> list[dict]:
        """Peer i's progress lines (complete lines only)."""
        return read_progress(self.out / f"peer{i}.progress")

    def results(self) -> dict[int, dict]:
        """Result dicts of the peers that finished (killed peers have none)."""
        found = {i: read_result(self.out / f"peer{i}.json") for i in self.procs}
        return {i: r for i, r in found.items() if r is not None}

    def log(self, i: int) -> str:
        path = self.out / f"peer{i}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.kill_all()
        if isinstance(self.master, MasterProcess):
            self.master.kill()
        else:
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
    made its first step within ``catch_up_s`` of that event (and counts as running from then on). While the master
    is down (from ``master_kill`` to ``master_restart``) nobody has to make a step; from the restart, every peer
    running or catching up must make its first step within ``catch_up_s`` (peers spawned or resumed meanwhile
    count from the restart); a peer killed, stalled or asked to leave before its first step, within
    ``catch_up_s``, is not held to it. Peers record steps as progress lines with ``kind="step"``; raises
    AssertionError naming the peer and the interval."""
    log = [e for e in h.events if e[0] >= h.run_started]
    steps = {i: [p["t"] for p in h.progress(i) if p["kind"] == "step"] for i in h.procs}
    running = {i for i in h.procs if h.spawned_at(i) < h.run_started}
    catching_up: dict[int, float] = {}  # peer -> time of its spawn / resume / the master's restart
    master_down = False
    moments = [(t, [(a, target) for _, a, target in group]) for t, group in itertools.groupby(log, lambda e: e[0])]
    for (ta, actions), (tb, _) in zip(moments, moments[1:]):  # the events of a wipe share one moment
        for action, target in actions:
            if action in ("kill", "stall", "leave"):  # a leaving peer may still finish the step it is in
                running.discard(target)
                catching_up.pop(target, None)
            elif action in ("spawn", "resume"):
                catching_up[target] = ta
            elif action == "master_kill":
                master_down = True
            elif action == "master_restart":
                master_down = False
                catching_up = {**{i: ta for i in running}, **{i: max(s, ta) for i, s in catching_up.items()}}
                running.clear()
        if master_down:
            continue
        for i in sorted(running):
            assert any(ta <= t <= tb for t in steps[i]), f"peer {i} made no step in [{ta:.2f}, {tb:.2f}]: {log}"
        for i, since in list(catching_up.items()):
            first = next((t for t in steps[i] if t >= since), None)
            gone = next((t for t, a, target in log if target == i and a in ("kill", "stall", "leave") and t >= since),
                        None)  # a peer killed (e.g. just after the master's restart) before it had to step
            if gone is not None and (first is None or first > gone) and gone - since <= catch_up_s:
                continue
            assert first is not None and first - since <= catch_up_s, f"peer {i} did not catch up: {log}"
            if first <= tb:
                running.add(i)
                del catching_up[i]


@atexit.register
def _kill_leftovers() -> None:
    for h in list(_LIVE_HARNESSES):
        h.kill_all()


