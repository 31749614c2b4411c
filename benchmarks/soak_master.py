"""Master soak: the shared-state soak with the master killed and restarted in the churn, and its figures.

    PYTHONPATH=. python benchmarks/soak_master.py              # 5 minutes, seed 11
    PYTHONPATH=. python benchmarks/soak_master.py --quick      # 40 s
    PYTHONPATH=. python benchmarks/soak_master.py --minutes 3 --seed 5 --master-kill-rate 0.15

The loop, the peer churn (kills, stalls, spawns, graceful leaves, wipes) and every check are those of
benchmarks/soak_state.py; besides, the master runs as a process (`pccl-arrays master`) that the seeded schedule
SIGKILLs at random moments and starts again on the same address after a random down time (0.5-5 s), while the
peer churn goes on: peers are killed, stalled, spawned and asked to leave while the master is down (never so many
killed that less than a majority of the group is left to come back, nor wiped: docs/master.md's fence). Peers
keep their identity and state and look for the master (master_grace, 60 s); the restarted master takes the group
over from the peers that come back. Peers use min_world_size=2, as the README loop does, so that a newcomer
that reaches a restarted master before the returning peers never commits a state alone (docs/master.md), and
connect_timeout=15 s, longer than any down time.

It reports, besides soak_state's figures: the master kills and their down times; the resume time after each
restart (from the new master's "listening on" to the next step of any peer; goal <= 2 s + the fence's 1 s
straggler wait); the takeovers the master logs ("taken over", PCCL_ARRAYS_LOG=info) and the peers that came back
after their group was taken over; the longest time without a step outside the master's outages (goal <= 3 s, as
soak_state) and including them (the down time not counted); and the master processes' RSS. Every peer and the
master share this machine's cores.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Run, print_footer  # noqa: E402
from soak_state import Sampler, check_and_measure, dead_intervals, hash_speed, leftovers, soak_parser  # noqa: E402
from soak_state import report as state_report  # noqa: E402

from pccl_arrays.testing import Harness, Schedule  # noqa: E402

RESUME_GOAL_S = 2.0 + 1.0  # tests/test_master_restart.py's bound + the fence's straggler wait
GAP_GOAL_S = 2.0 + 1.0  # soak_state's: the master's peer deadline + 1 s


def outage_figures(h: Harness) -> list[dict]:
    """Per master kill: when, how long the master was down (kill to "listening on" again), and how long until
    a peer made a step after that; the events of the schedule while it was down."""
    steps = sorted(p["t"] for i in h.procs for p in h.progress(i) if p["kind"] == "step")
    out = []
    for k, u in h.master_outages():
        first = next((t for t in steps if t >= u), None)
        during = [(a, i) for t, a, i in h.events if k < t < u and a not in ("master_kill", "master_restart")]
        out.append({"killed_at_s": k - h.run_started, "down_s": u - k,
                    "resume_s": None if first is None else first - u, "while_down": during})
    return out


def gaps(h: Harness) -> dict:
    """The longest time without a step by any peer, not counting the time no peer was alive (a wipe until the
    first newcomer joined) nor the master's outages (kill to "listening on" again): between steps on either side
    of no outage ("outside"), and over all steps ("all": an outage's gap is the time before the kill plus the
    resume)."""
    ts = sorted(p["t"] for i in h.procs for p in h.progress(i) if p["kind"] == "step" and p["t"] >= h.run_started)
    dead, outages = dead_intervals(h), h.master_outages()

    def overlap(a: float, b: float, spans) -> float:
        return sum(max(0.0, min(b, d1) - max(a, d0)) for d0, d1 in spans)

    outside, everything = (0.0, 0.0), (0.0, 0.0)
    for a, b in zip(ts, ts[1:]):
        g = (max(0.0, (b - a) - overlap(a, b, dead) - overlap(a, b, outages)), a - h.run_started)
        everything = max(everything, g)
        if not any(a < u and b > k for k, u in outages):
            outside = max(outside, g)
    return {"outside_outages_s": outside[0], "outside_at_s": outside[1], "all_s": everything[0],
            "all_at_s": everything[1]}


def master_log_figures(h: Harness) -> dict:
    """What the master's incarnations logged: takeovers (per incarnation), their in-doubt verdicts, the peers
    that came back after their group was taken over (late returners). Operations in doubt are counted once
    each (every returning member reports it)."""
    per, lines_kept = [], []
    for k, lines in enumerate(h.master.log_lines()):
        taken = [x for x in lines if "master: group" in x and "taken over:" in x]
        late = [x for x in lines if "came back after its group was taken over" in x]
        per.append({"incarnation": k, "takeovers": len(taken), "late_returners": len(late),
                    "late_holding_state": sum("holding the state" in x for x in late),
                    "commits": len({m for x in taken for m in re.findall(r"(\d+):commit\b", x)}),
                    "aborts": len({m for x in taken for m in re.findall(r"(\d+):abort\b", x)}),
                    "errors": [x for x in lines if "Traceback" in x or "ERROR" in x][:5]})
        lines_kept += [f"[{k}] {x}" for x in taken + late]
    return {"incarnations": per, "takeover_lines": lines_kept[:200],
            "takeovers": sum(p["takeovers"] for p in per),
            "restarts_taken_over": sum(p["takeovers"] > 0 for p in per[1:]),
            "late_returners": sum(p["late_returners"] for p in per),
            "late_holding_state": sum(p["late_holding_state"] for p in per),
            "in_doubt_commits": sum(p["commits"] for p in per), "in_doubt_aborts": sum(p["aborts"] for p in per)}


def peer_counts(h: Harness) -> dict:
    res = h.results().values()
    return {"connect_retries": sum(p["kind"] == "connect_retry" for i in h.procs for p in h.progress(i)),
            "too_few": sum(r.get("too_few", 0) for r in res)}


def summary(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    return {"median": statistics.median(values), "max": max(values), "min": min(values)} if values else None


def report(doc: dict) -> None:
    state_report({**doc, "goals": [], "errors": [], "notes": [], "gap": None})
    m = doc.get("master")
    if m:
        print(f"\nmaster kills: {m['kills']} (SIGKILL, restarted on the same address; {m['bind_retries']} restarts "
              "found the port still in use and retried)")
        if m["down_s"]:
            print(f"master down (kill -> listening again): median {m['down_s']['median']:.2f} s, "
                  f"min {m['down_s']['min']:.2f} s, max {m['down_s']['max']:.2f} s")
        if m["resume_s"]:
            print(f"new master listening -> next step of any peer: median {m['resume_s']['median']:.2f} s, "
                  f"max {m['resume_s']['max']:.2f} s")
        for o in m["outages"]:
            r = "never" if o["resume_s"] is None else f"{o['resume_s']:.2f} s"
            print(f"  at {o['killed_at_s']:6.1f} s: down {o['down_s']:.2f} s, resumed after {r}; while down: "
                  f"{', '.join(f'{a} {i}' for a, i in o['while_down']) or 'nothing'}")
        lg = m["log"]
        print(f"takeovers logged: {lg['takeovers']} ({lg['restarts_taken_over']} of {m['kills']} restarts); in "
              f"doubt: {lg['in_doubt_commits']} committed, {lg['in_doubt_aborts']} aborted; peers back after their "
              f"group was taken over: {lg['late_returners']} ({lg['late_holding_state']} holding the state)")
        print(f"connect() calls that found no master and were retried: {m['peers']['connect_retries']}; "
              f"steps restarted on TooFewPeersError: {m['peers']['too_few']}")
        if m.get("rss_max_MiB") is not None:
            print(f"the master's processes: RSS at most {m['rss_max_MiB']:.0f} MiB, threads at most "
                  f"{m['threads_max']}")
    g = doc.get("gaps")
    if g:
        print(f"longest time without a step outside the master's outages: {g['outside_outages_s']:.2f} s "
              f"({g['outside_at_s']:.0f} s in); over every step, the down time not counted: {g['all_s']:.2f} s "
              f"({g['all_at_s']:.0f} s in)")
    print_footer(doc)


def main(argv=None) -> int:
    ap = soak_parser(__doc__, "soak_master")
    ap.add_argument("--master-kill-rate", type=float, default=0.12, help="weight of master kills among the events")
    ap.add_argument("--down", type=float, nargs=2, default=(0.5, 5.0), metavar=("MIN", "MAX"),
                    help="the master's down time is drawn uniformly from [MIN, MAX] s")
    bench = Run.start(ap, argv)
    a = bench.args
    duration = 40.0 if a.quick else a.minutes * 60
    schedule = Schedule.random(a.seed, duration, a.initial, a.min_peers, a.max_peers, kill_rate=0.2,
                               stall_rate=0.08, spawn_rate=0.22, min_gap=2.5, stall_s=3.0, start=2.0,
                               leave_rate=0.06, wipe_rate=a.wipe_rate, keep=a.keep,
                               master_kill_rate=a.master_kill_rate, master_down=tuple(a.down))
    kinds = ("kill", "stall", "spawn", "leave", "wipe", "master_kill")
    doc = {"benchmark": "soak_master", "machine": f"{os.cpu_count()} cores", "hash_GBps": hash_speed(),
           "config": {"duration_s": duration, "seed": a.seed, "initial": a.initial, "min_peers": a.min_peers,
                      "max_peers": a.max_peers, "keep": a.keep, "state_MiB": 2 * a.n * 4 / 2**20,
                      "master_kill_rate": a.master_kill_rate, "down_s": list(a.down)},
           "events": {k: sum(e.action == k for e in schedule.events) for k in kinds},
           "schedule": schedule.as_list(), "checks": None, "figures": {}, "goals": [], "errors": [], "notes": []}
    comm = {"connect_timeout": 15.0, "min_world_size": 2}
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness({"peer_timeout": 2.0, "handshake_timeout": 2.0}, "pccl_arrays.testing:state_loop",
                    {"n": a.n, "busy_ms": 20.0, "quantized": not a.no_quantized, "master_restarts": True,
                     "comm": comm}, tmp, master_process=True)
        sampler = Sampler(h, master_pid=lambda: h.master.pid)
        try:
            h.start(a.initial)
            print(f"running {duration:.0f} s of churn: {doc['events']} ...", flush=True)
            sampler.start()
            try:
                h.run(schedule)
            except Exception:
                doc["errors"].append(f"the schedule stopped: {traceback.format_exc()[-2000:]}")
                h.stop()
            sampler.stop()
            try:
                h.wait_all(60.0)
            except AssertionError as e:
                doc["errors"].append(f"hang: {str(e)[:2000]}")
            outages = outage_figures(h)
            master_series = [s for _, s in sampler.samples.pop("master", [])]
            doc["master"] = {"kills": len(outages), "bind_retries": h.master.binds_retried, "outages": outages,
                             "down_s": summary([o["down_s"] for o in outages]),
                             "resume_s": summary([o["resume_s"] for o in outages]),
                             "log": master_log_figures(h), "peers": peer_counts(h),
                             "rss_max_MiB": max((s["rss_MiB"] for s in master_series), default=None),
                             "threads_max": max((s["threads"] for s in master_series), default=None)}
            doc["gaps"] = gaps(h)
            doc["event_log"] = [(round(t - h.run_started, 3), a, i) for t, a, i in h.events]
            doc["run_started_monotonic"] = h.run_started  # the clock of the peers' progress lines
            check_and_measure(h, schedule, sampler, doc)
        finally:
            h.close()
            doc["leftovers"] = leftovers(tmp)
            if doc["errors"] and os.environ.get("SOAK_EVIDENCE"):  # keep the run's files for a look
                import shutil
                shutil.copytree(tmp, os.environ["SOAK_EVIDENCE"], dirs_exist_ok=True)
    m = doc.get("master") or {}
    resumed = [o["resume_s"] for o in m.get("outages", [])]
    doc["goals"] = [
        {"text": "every check of the churn test holds for the whole soak, master kills included",
         "met": not doc["errors"]},
        {"text": f"after every master restart a peer steps within {RESUME_GOAL_S:.0f} s of the new master listening",
         "met": bool(resumed) and all(r is not None and r <= RESUME_GOAL_S for r in resumed)},
        {"text": "every restarted master took the group over (its log says so)",
         "met": bool(m) and m["log"]["restarts_taken_over"] == m["kills"]},
        {"text": f"no gap without a step over {GAP_GOAL_S:.0f} s outside the master's outages",
         "met": doc.get("gaps", {}).get("outside_outages_s", 0) <= GAP_GOAL_S},
        {"text": "no peer or master process left over", "met": doc["leftovers"] == []},
        {"text": "peers sampled for half the run or more (the kept ones): RSS (last vs first quarter median) grows at "
                 "most 10 % + 8 MiB, threads never above the first sample's + 4",
         "met": any(s["minutes"] * 120 >= duration for s in doc.get("lifelong", {}).values()) and all(
             s["rss_quarters_MiB"][1] <= 1.1 * s["rss_quarters_MiB"][0] + 8
             and s["threads_max"] <= s["first"]["threads"] + 4
             for s in doc["lifelong"].values() if s["minutes"] * 120 >= duration)}]
    doc["notes"].append(f"{a.max_peers} peer processes and the master share {doc['machine']}: rates are "
                        "oversubscribed; compare them only within one run")
    return bench.finish(doc, report)


if __name__ == "__main__":
    sys.exit(main())
