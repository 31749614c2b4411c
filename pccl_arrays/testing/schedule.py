"""Churn schedules: when to kill (SIGKILL), stall (SIGSTOP), resume (SIGCONT), spawn peers, ask one to leave
gracefully, wipe the group (kill every live peer at once and spawn newcomers in their place), or kill the master
(a master run as a process: ``master_kill``, then ``master_restart`` on the same address).

How this works. A :class:`Schedule` is a list of ``(t_seconds, action, target)`` events in time order;
:meth:`Schedule.random` draws one from a seed, keeping the number of live peers within bounds, so that a
failing run can be replayed exactly. :meth:`pccl_arrays.testing.Harness.run` executes it.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Optional

from ..errors import InvalidArgumentError

ACTIONS = ("kill", "stall", "resume", "spawn", "leave", "wipe", "master_kill", "master_restart")


@dataclasses.dataclass(frozen=True)
class Event:
    t: float  #: seconds after the start of :meth:`Harness.run`
    action: str  #: one of ACTIONS
    #: the peer index (for spawn: the index it gets, None for the next one; for wipe: how many newcomers)
    target: Optional[int] = None


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
               stall_s: float = 3.0, start: float = 1.0, leave_rate: float = 0.0,
               wipe_rate: float = 0.0, keep: int = 0, master_kill_rate: float = 0.0,
               master_down: tuple = (0.5, 5.0), master_settle: float = 4.0) -> "Schedule":
        """A reproducible schedule: the same arguments always give the same events.

        Events come at least ``min_gap`` s apart (exponential gaps of the total rate otherwise); each picks an
        action among the feasible ones, weighted by its rate, so that the live peers stay within
        [min_peers, max_peers] (a stalled one counts as live: it rejoins after its resume, which comes ``stall_s``
        later with no other event in between). A leave takes one live peer out like a kill, but the peer closes its
        communicator itself at its next step. A wipe kills every live peer and spawns ``min_peers`` newcomers at
        the same moment (their group's state is gone with its holders), then nothing happens for ``stall_s``. The
        first ``keep`` peers (and after a wipe the first ``keep`` newcomers) are never killed, stalled or asked to
        leave, only wiped: long-lived peers whose memory a soak can watch. Peers are numbered as the harness
        spawns them (0..initial-1 first). Rates of 0 add no choice, so schedules drawn before an action existed
        stay the same.

        A master kill (``master_kill_rate``) is followed by its ``master_restart`` after a down time drawn uniformly
        from ``master_down``; the events drawn meanwhile go on as usual (peers are killed, stalled, spawned and
        leave while the master is down), except wipes and another master kill; the restart comes before the end,
        and the next master kill ``master_settle`` s after it at the earliest (the restarted master has taken the
        group over by then, so the ring the peers report next time is the one they ran in).
        While the master is down, peers are killed (or asked to leave) only as long as more than half of those live
        at the master kill are left: a restarted master takes a group over only when a strict majority of its last
        ring comes back (docs/master.md), and a run that loses most of its peers with its master cannot go on.
        """
        if not 1 <= min_peers <= initial <= max_peers:
            raise InvalidArgumentError("need 1 <= min_peers <= initial <= max_peers")
        if not 0 <= keep < min_peers:
            raise InvalidArgumentError("need 0 <= keep < min_peers (someone must be left to kill)")
        rng = random.Random(seed)
        live, next_index = list(range(initial)), initial
        kept = set(range(keep))
        events: list[Event] = []
        t = start
        total = kill_rate + stall_rate + spawn_rate + leave_rate + wipe_rate + master_kill_rate
        restart_at, live_at_kill, killed_while_down = None, 0, 0  # the pending master restart
        settled_at = start
        while t < duration - min_gap:  # the last event leaves one gap before the end, to see its effect
            if restart_at is not None and t >= restart_at:
                restart_at, settled_at = None, restart_at + master_settle
            master_up = restart_at is None
            choices = []
            if len(live) - 1 >= min_peers:
                if master_up or 2 * (killed_while_down + 1) < live_at_kill:
                    choices += [("kill", kill_rate), ("leave", leave_rate)]
                if t + stall_s < duration - min_gap:
                    choices.append(("stall", stall_rate))
            if t + stall_s < duration - min_gap and master_up:
                choices.append(("wipe", wipe_rate))
            if len(live) + 1 <= max_peers:
                choices.append(("spawn", spawn_rate))
            if master_up and t >= settled_at and t + master_down[1] < duration - min_gap:
                choices.append(("master_kill", master_kill_rate))
            choices = [c for c in choices if c[1] > 0]
            t = round(t, 3)
            if choices:
                action = rng.choices([c[0] for c in choices], [c[1] for c in choices])[0]
                if action == "master_kill":
                    down = rng.uniform(*master_down)
                    restart_at = round(t + down, 3)
                    live_at_kill, killed_while_down = len(live), 0
                    events += [Event(t, "master_kill"), Event(restart_at, "master_restart")]
                elif action == "spawn":
                    events.append(Event(t, "spawn", next_index))
                    live.append(next_index)
                    next_index += 1
                elif action in ("kill", "leave"):
                    victims = [i for i in live if i not in kept]
                    victim = victims[rng.randrange(len(victims))]
                    live.remove(victim)
                    events.append(Event(t, action, victim))
                    killed_while_down += restart_at is not None
                elif action == "wipe":
                    events.append(Event(t, "wipe", min_peers))
                    live = list(range(next_index, next_index + min_peers))
                    kept = set(live[:keep])
                    next_index += min_peers
                    t += stall_s
                else:  # the stalled peer is the only thing that happens until its resume
                    victims = [i for i in live if i not in kept]
                    victim = victims[rng.randrange(len(victims))]
                    events += [Event(t, "stall", victim), Event(round(t + stall_s, 3), "resume", victim)]
                    t += stall_s
            t += max(min_gap, rng.expovariate(total) if total > 0 else duration)
        return cls(events, duration)

    def as_list(self) -> list:
        return [(e.t, e.action, e.target) for e in self.events]

