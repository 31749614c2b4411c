"""Shared-state soak: the churn test's DiLoCo-style loop for minutes, with more churn, and its figures.

    PYTHONPATH=. python benchmarks/soak_state.py              # 5 minutes, seed 11
    PYTHONPATH=. python benchmarks/soak_state.py --quick      # 40 s
    PYTHONPATH=. python benchmarks/soak_state.py --minutes 20 --seed 4 --max-peers 8

Peers run pccl_arrays.testing.state_loop (update_topology, sync_shared_state, two async all-reduces per step,
plain and quantized, overlapping Python work, deterministic update, a checkpoint every 20 revisions) while a
seeded schedule kills (SIGKILL), stalls (SIGSTOP past the master's deadline), spawns peers, asks peers to leave
gracefully, and now and then wipes the group (every live peer killed at once, newcomers spawned: they find the
state lost, say so, and restart it from the checkpoint as a new lineage). The run is checked exactly as
tests/test_state_churn.py checks it (one state hash per (lineage, revision) on every peer, exact results only,
0 bytes of state for peers that stayed, no hang). Besides, it reports the longest gap in which no peer made a
step while a peer was alive (goal: <= the master's peer deadline, 2 s, + 1 s: a stalled or killed member is
noticed and evicted within it, and the others go on; from a wipe until a newcomer joined no peer is alive), the
state restarts, the memory (RSS) and thread counts of the master's process and the longest-lived peers
(sampled every 10 s; the medians of the first and last quarter of each life after 20 s), and any peer process
left over after the run; and throughput, how fast
newcomers caught up, and what state syncs cost. Every peer shares this machine's cores, so absolute rates say
more about the machine than about the library; the checks are what matters.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Run, benchmark_parser, print_footer  # noqa: E402

from pccl_arrays import _core  # noqa: E402
from pccl_arrays.testing import Harness, Schedule  # noqa: E402
from pccl_arrays.testing import check_state_run, process_status  # noqa: E402


def hash_speed() -> float:
    """GB/s of the content hash over 256 MiB (one core)."""
    buf = np.random.default_rng(0).integers(0, 255, 256 << 20, dtype=np.uint8)
    _core.content_hash(buf.ctypes.data, 1 << 20)
    t0 = time.perf_counter()
    _core.content_hash(buf.ctypes.data, buf.nbytes)
    return buf.nbytes / (time.perf_counter() - t0) / 1e9


def figures_of(h: Harness) -> dict:
    """Catch-up times and sync costs from the peers' progress files."""
    catch_up, newcomer_rates, stable_ms, steps_per_s = [], [], [], []
    for i in h.procs:
        prog = h.progress(i)
        steps = [p for p in prog if p["kind"] == "step"]
        syncs = [p for p in prog if p["kind"] == "sync"]
        if h.spawned_at(i) >= h.run_started and steps:
            catch_up.append(steps[0]["t"] - h.spawned_at(i))
        for s in syncs:
            if s["received"] > 0:
                newcomer_rates.append(s["received"] / max(s["seconds"], 1e-9) / 1e6)
            else:
                stable_ms.append(s["seconds"] * 1e3)
        if len(steps) > 1:
            steps_per_s.append((len(steps) - 1) / (steps[-1]["t"] - steps[0]["t"]))
    return {
        "catch_up_s": {"median": statistics.median(catch_up), "max": max(catch_up)} if catch_up else None,
        "receiving_sync_MBps": {"median": statistics.median(newcomer_rates), "min": min(newcomer_rates)}
        if newcomer_rates else None,
        "stable_sync_ms": {"median": statistics.median(stable_ms), "p99": float(np.percentile(stable_ms, 99))}
        if stable_ms else None,
        "steps_per_s_per_peer": statistics.median(steps_per_s) if steps_per_s else None,
    }


def dead_intervals(h: Harness) -> list[tuple[float, float]]:
    """From each wipe until the first newcomer joined: no peer is alive."""
    joined = sorted(p["t"] for i in h.procs for p in h.progress(i) if p["kind"] == "joined")
    out = []
    for t, action, _ in h.events:
        if action == "wipe":
            out.append((t, next((j for j in joined if j >= t), t)))
    return out


def longest_gap(h: Harness) -> dict:
    """The longest time after the first step of the run in which no peer recorded a step, not counting the time
    in which no peer was alive (dead_intervals); and the longest time from a wipe to the restarted group's first
    step."""
    ts = sorted(p["t"] for i in h.procs for p in h.progress(i) if p["kind"] == "step" and p["t"] >= h.run_started)
    dead = dead_intervals(h)

    def alive_time(a: float, b: float) -> float:
        return (b - a) - sum(max(0.0, min(b, d1) - max(a, d0)) for d0, d1 in dead)

    gaps = [(alive_time(a, b), a - h.run_started) for a, b in zip(ts, ts[1:])]
    worst = max(gaps, default=(0.0, 0.0))
    restart = [next((t for t in ts if t >= d0), d0) - d0 for d0, _ in dead]
    return {"seconds": worst[0], "at_s": worst[1], "wipe_to_step_s": max(restart, default=None)}


def sample(pid: int) -> dict | None:
    """RSS (MiB) and thread count of a process (None once it is gone)."""
    s = process_status(pid)
    return None if s is None else {"rss_MiB": s.rss / 2**20, "threads": s.threads}


class Sampler:
    """Samples every live peer every `every` seconds in a thread; `lifelong(h)` summarises, for the master's
    process and the `top` peers sampled longest, the samples after `warm` seconds of their life: first and last,
    the medians of the first and the last quarter (a peer's RSS swings by ~15 MiB from one sample to the next as
    results and received state come and go; the quarter medians show a trend through that), and the largest."""

    def __init__(self, h: Harness, every: float = 10.0, master_pid=os.getpid):
        self.h, self.every, self.samples = h, every, {}
        self.master_pid = master_pid  # the master's process now (default: this one, which runs it); None: down
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            now = time.monotonic()
            for i, p in list(self.h.procs.items()):
                if p.poll() is None and i not in self.h.stalled and (s := sample(p.pid)):
                    self.samples.setdefault(i, []).append((now, s))
            if (pid := self.master_pid()) is not None and (s := sample(pid)):
                self.samples.setdefault("master", []).append((now, s))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def lifelong(self, warm: float = 20.0, top: int = 4) -> dict:
        """The master's process (key "master") and the `top` peers sampled longest."""
        out = {}
        for i, series in self.samples.items():
            born = self.h.run_started if i == "master" else max(self.h.spawned_at(i), self.h.run_started)
            later = [(t, s) for t, s in series if t - born >= warm]
            if len(later) >= 2:
                q = max(1, len(later) // 4)
                rss = [s["rss_MiB"] for _, s in later]
                out[i] = {"first": later[0][1], "last": later[-1][1], "minutes": (later[-1][0] - later[0][0]) / 60,
                          "rss_quarters_MiB": [statistics.median(rss[:q]), statistics.median(rss[-q:])],
                          "rss_max_MiB": max(rss), "threads_max": max(s["threads"] for _, s in later),
                          "series": [(round(t - born, 1), s["rss_MiB"], s["threads"]) for t, s in later]}
        peers = sorted(((i, v) for i, v in out.items() if i != "master"), key=lambda kv: -kv[1]["minutes"])[:top]
        return {**({"master": out["master"]} if "master" in out else {}), **dict(peers)}


def leftovers(out_dir: str) -> list[int]:
    """Pids of processes still running a peer of this run (their command line names its directory) or a master
    process of it (it runs in that directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmd = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                cwd = ""
            if "pccl_arrays" in cmd and (out_dir in cmd or cwd == os.path.realpath(out_dir)):
                found.append(int(entry))
    return found


def report(doc: dict) -> None:
    c = doc["config"]
    print(f"\nShared-state soak: {c['duration_s']:.0f} s, seed {c['seed']}, {c['initial']} initial peers "
          f"({c['min_peers']}..{c['max_peers']} live), state {c['state_MiB']:.1f} MiB, on {doc['machine']}")
    print(f"events: {doc['events']}")
    ch, f = doc["checks"], doc["figures"]
    if ch:
        print(f"revisions {ch['revisions']}, steps recorded {ch['steps']} (all exact, one state hash per revision)")
        print(f"peers that stayed: {ch['stayed']}, their {ch['stable_syncs']} syncs after the first moved 0 bytes")
        print(f"newcomer syncs: {ch['newcomer_syncs']}, {ch['newcomer_bytes'] / 2**20:.1f} MiB received, "
              f"sources per sync {ch['newcomer_sources']}")
        print(f"rejoins after a stall: {ch['rejoins']}, steps restarted after a lost peer: {ch['peer_lost']}, "
              f"graceful leaves: {ch['left']}")
        print(f"wipes: {ch['wipes']}, state restarts (new lineages, each said on stderr): {ch['restarts']} "
              f"(by {ch['peers_restarting']} peers); quantized results checked at {ch['quantized_revisions']} "
              "revisions")
    if f.get("catch_up_s"):
        print(f"newcomer spawn -> first step: median {f['catch_up_s']['median']:.2f} s, max {f['catch_up_s']['max']:.2f} s"
              " (includes starting Python and importing numpy)")
    if f.get("receiving_sync_MBps"):
        print(f"syncs that received state: median {f['receiving_sync_MBps']['median']:.0f} MB/s")
    if f.get("stable_sync_ms"):
        print(f"syncs that moved nothing: median {f['stable_sync_ms']['median']:.2f} ms, "
              f"p99 {f['stable_sync_ms']['p99']:.2f} ms")
    if f.get("steps_per_s_per_peer"):
        print(f"steps per second per peer: {f['steps_per_s_per_peer']:.1f}")
    if doc.get("gap"):
        print(f"longest time without a step anywhere while a peer was alive: {doc['gap']['seconds']:.2f} s "
              f"({doc['gap']['at_s']:.0f} s into the run)")
        if doc["gap"]["wipe_to_step_s"] is not None:
            print(f"longest wipe -> first step of the restarted group: {doc['gap']['wipe_to_step_s']:.2f} s "
                  "(includes starting Python and importing numpy)")
    for i, s in doc.get("lifelong", {}).items():
        who = "the master's process (with the harness)" if i == "master" else f"peer {i}"
        a, b = s["rss_quarters_MiB"]
        print(f"{who} ({s['minutes']:.1f} min sampled): RSS {s['first']['rss_MiB']:.0f} -> "
              f"{s['last']['rss_MiB']:.0f} MiB (first / last quarter median {a:.0f} / {b:.0f}, max "
              f"{s['rss_max_MiB']:.0f}), threads {s['first']['threads']} -> {s['last']['threads']} "
              f"(max {s['threads_max']})")
    if "leftovers" in doc:
        print(f"peer processes left over after the run: {len(doc['leftovers'])}")
    print(f"content hash: {doc['hash_GBps']:.1f} GB/s on one core")
    print_footer(doc)


def check_and_measure(h: Harness, schedule: Schedule, sampler, doc: dict) -> None:
    """The end of a soak run (soak_master.py's too): the long-lived peers' samples, the churn test's checks (a
    failure is recorded in doc["errors"]) and the figures."""
    doc["lifelong"] = {str(i): s for i, s in sampler.lifelong().items()}
    try:
        doc["checks"] = check_state_run(h, schedule, catch_up_s=15.0)
    except AssertionError as e:
        doc["errors"].append(f"check failed: {str(e)[:2000]}")
    doc["figures"] = figures_of(h)


def soak_parser(doc: str, name: str):
    """The soak's options (soak_master.py adds its own to these)."""
    ap = benchmark_parser(doc, name, quick="40 s")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--initial", type=int, default=5)
    ap.add_argument("--min-peers", type=int, default=3)
    ap.add_argument("--max-peers", type=int, default=7)
    ap.add_argument("--n", type=int, default=1 << 20, help="float32 elements per state entry (two such entries)")
    ap.add_argument("--no-quantized", action="store_true", help="only the plain all-reduce per step")
    ap.add_argument("--keep", type=int, default=2, help="peers never killed, stalled or asked to leave (only wiped)")
    ap.add_argument("--wipe-rate", type=float, default=0.004,
                    help="weight of wipes among the events (kill 0.2, stall 0.08, spawn 0.22, leave 0.06)")
    return ap


def main(argv=None) -> int:
    ap = soak_parser(__doc__, "soak_state")
    bench = Run.start(ap, argv)
    a = bench.args
    duration = 40.0 if a.quick else a.minutes * 60
    schedule = Schedule.random(a.seed, duration, a.initial, a.min_peers, a.max_peers, kill_rate=0.2,
                               stall_rate=0.08, spawn_rate=0.22, min_gap=2.5, stall_s=3.0, start=2.0,
                               leave_rate=0.06, wipe_rate=a.wipe_rate, keep=a.keep)
    doc = {"benchmark": "soak_state", "machine": f"{os.cpu_count()} cores", "hash_GBps": hash_speed(),
           "config": {"duration_s": duration, "seed": a.seed, "initial": a.initial, "min_peers": a.min_peers,
                      "max_peers": a.max_peers, "keep": a.keep, "state_MiB": 2 * a.n * 4 / 2**20},
           "events": {k: sum(e.action == k for e in schedule.events) for k in ("kill", "stall", "spawn", "leave",
                                                                                 "wipe")},
           "schedule": schedule.as_list(), "checks": None, "figures": {}, "goals": [], "errors": [], "notes": []}
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness({"peer_timeout": 2.0, "handshake_timeout": 2.0}, "pccl_arrays.testing:state_loop",
                    {"n": a.n, "busy_ms": 20.0, "quantized": not a.no_quantized}, tmp)
        sampler = Sampler(h)
        try:
            h.start(a.initial)
            print(f"running {duration:.0f} s of churn: {doc['events']} ...", flush=True)
            sampler.start()
            h.run(schedule)
            sampler.stop()
            h.wait_all(30.0)
            doc["gap"] = longest_gap(h)
            check_and_measure(h, schedule, sampler, doc)
        finally:
            h.close()
            doc["leftovers"] = leftovers(tmp)
    gap_goal = 2.0 + 1.0  # the master's peer deadline (peer_timeout above) + 1 s
    doc["goals"] = [{"text": "every check of the churn test holds for the whole soak", "met": not doc["errors"]},
                    {"text": f"no gap without a step over {gap_goal:.0f} s", "met": doc.get("gap", {}).get(
                        "seconds", 0) <= gap_goal},
                    {"text": "no peer process left over", "met": doc["leftovers"] == []},
                    {"text": "the master and long-lived peers: RSS (last vs first quarter median) grows at most 10 % "
                             "+ 8 MiB, threads never above the first sample's + 4",
                     "met": bool(doc.get("lifelong")) and all(
                         s["rss_quarters_MiB"][1] <= 1.1 * s["rss_quarters_MiB"][0] + 8
                         and s["threads_max"] <= s["first"]["threads"] + 4 for s in doc["lifelong"].values())}]
    doc["notes"].append(f"{a.max_peers} peer processes and the master share {doc['machine']}: rates are "
                        "oversubscribed; compare them only within one run")
    return bench.finish(doc, report)


if __name__ == "__main__":
    sys.exit(main())
