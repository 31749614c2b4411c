"""A newcomer's join into a group that holds shared state, and small all-reduce latency, on this machine.

Usage (from the repository root; PYTHONPATH picks the build of pccl_arrays, so two builds can be compared)::

    .venv/bin/python benchmarks/join.py                   # 3 holders of 64 MiB + 8 newcomers; 4 KiB at N = 2, 3
    .venv/bin/python benchmarks/join.py --quick           # CI smoke test: 2 newcomers, 30 all-reduces per mode
    .venv/bin/python benchmarks/join.py --compare old=/tmp/old-site new=/tmp/new-site --rounds 4
                                                          # two builds, runs interleaved (ABBA), one report

What it measures, with one build:
* join: a master in this process and 3 holder processes that hold a float32 SharedState of --state-bytes
  (64 MiB) at revision 1 and vote newcomers in as soon as one is pending (``are_peers_pending()`` polled every
  2 ms, then ``update_topology()``, the loop of ``_common.join_group``). Then --joins newcomer processes, one
  after the other, each timing ``Communicator(...)`` + ``connect()`` (admission) and its first
  ``sync_shared_state()`` (the state: it receives all of it, striped over the holders), after its imports and
  with its own state array already written; total = admission + sync. Each newcomer checks the state it got and
  leaves; the holders then vote it out before the next one starts. "> 1 vote" counts the joins for which the
  holders' first vote after seeing the newcomer pending completed without it (the master had not finished
  probing its data address), so that they had to vote again.
* latency: groups of N peers (--peers, 2 and 3) all-reduce 4 KiB of float32 (sum), fresh (``y =
  all_reduce(x)``) and ``out=`` alternating, --iters times each; before each timed call a 4-byte all-reduce
  lines the peers up. The time of a call is the slowest peer's; medians over the calls.

With ``--compare NAME=SITE ...`` this script runs itself once per build and round, with PYTHONPATH=SITE (the
directory a ``pip install --target`` of that build made), builds in ABBA order from round to round so that a
slow spell of this shared machine does not land on one build only, and reports each build's pooled medians and
their ratios to the first build, all from this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _procs  # noqa: E402
from _common import (KiB, MiB, Run, benchmark_parser, cpu_model, fmt_size, import_pccl_arrays, join_group,  # noqa: E402
                     parse_size, pattern, print_footer, script_main, spread)

HOLDERS = 3
GOAL_JOIN_S = 0.060  # a newcomer's connect() + first sync_shared_state() of 64 MiB
GOAL_4KIB_N2_S = 0.25e-3  # 4 KiB all-reduce at N = 2, fresh and out=
MODES = ("fresh", "out")
RESULT_ENV = "PCCL_ARRAYS_RESULT_FILE"  # what pccl_arrays.testing.ProcessGroup names each worker's result file


# -- workers: older builds (before pccl_arrays.testing.ProcessGroup) too --------------------------------------------
class _PlainGroup:
    """The part of pccl_arrays.testing.ProcessGroup this benchmark uses, for builds of pccl_arrays that predate it:
    ``python ARGV...`` per worker, each writing its result (JSON) to the file named by RESULT_ENV."""

    def __init__(self, argvs: list[list[str]], env: dict):
        self._dir = tempfile.TemporaryDirectory(prefix="pccl-join-")
        self.out = Path(self._dir.name)
        self.procs = []
        for i, argv in enumerate(argvs):
            with open(self.out / f"worker{i}.log", "wb") as log:
                worker_env = dict(os.environ, **env, **{RESULT_ENV: str(self.out / f"worker{i}.json")})
                self.procs.append(subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL, env=worker_env))

    def wait(self, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        try:
            for i, p in enumerate(self.procs):
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise RuntimeError(f"worker {i} still running after {timeout:.0f} s:\n{self._tail(i)}") from None
                path = self.out / f"worker{i}.json"
                if p.returncode != 0 or not path.exists():
                    raise RuntimeError(f"worker {i} exited with {p.returncode} without a result:\n{self._tail(i)}")
            return [json.loads((self.out / f"worker{i}.json").read_text()) for i in range(len(self.procs))]
        finally:
            self.close()

    def _tail(self, i: int) -> str:
        return (self.out / f"worker{i}.log").read_text(errors="replace")[-2500:]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self._dir.cleanup()


def start_workers(argvs: list[list[str]]):
    """A group of workers (``wait(timeout)`` → results, ``close()``) through _procs, or _PlainGroup for a build
    without pccl_arrays.testing.ProcessGroup."""
    try:
        from pccl_arrays.testing import ProcessGroup  # noqa: F401
    except ImportError:
        return _PlainGroup(argvs, _procs.child_env())
    return _procs.group(argvs)


def report_result(result: dict) -> None:
    """Worker side: _procs.report, or the same file format for a build without pccl_arrays.testing.report."""
    try:
        from pccl_arrays.testing import report  # noqa: F401
    except ImportError:
        path = Path(os.environ[RESULT_ENV])
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result))
        tmp.rename(path)
        return
    _procs.report(result)


def communicator(master: str):
    import pccl_arrays as pa
    return pa.Communicator(master, connections=4, listen="127.0.0.1:0", data_timeout=60.0)


def holder(a) -> dict:
    """One of the group's peers: holds the state, votes each newcomer in, syncs with it, votes it out."""
    import pccl_arrays as pa

    c = join_group(communicator(a.master), HOLDERS, timeout=120)
    state = pa.SharedState({"w": pattern(a.state_bytes // 4, 0)}, revision=1)
    c.sync_shared_state(state)  # the holders agree among themselves: nothing moves
    Path(a.ready_dir, f"holder{a.rank}").touch()
    syncs, votes = [], []
    for _ in range(a.joins):
        votes.append(0)  # votes it took to admit the newcomer: more than one when a vote completed without it
        while c.total_world_size < HOLDERS + 1:
            if c.are_peers_pending():
                c.update_topology()
                votes[-1] += 1
            else:
                time.sleep(0.002)
        t = time.perf_counter()
        c.sync_shared_state(state)
        syncs.append(time.perf_counter() - t)
        while c.total_world_size > HOLDERS:  # the newcomer leaves after its sync; the vote completes when it has
            c.update_topology()
    c.close()
    return {"sync_s": syncs, "votes": votes}


def newcomer(a) -> dict:
    """Joins the holders' group, receives the state, checks it, leaves."""
    import numpy as np
    import pccl_arrays as pa

    w = np.empty(a.state_bytes // 4, np.float32)
    w.fill(0.0)  # a newcomer's model exists before it joins: its pages are written
    state = pa.SharedState({"w": w}, revision=0)
    t0 = time.perf_counter()
    c = communicator(a.master)
    c.connect(timeout=60)
    t1 = time.perf_counter()
    info = c.sync_shared_state(state)
    t2 = time.perf_counter()
    correct = bool(np.array_equal(state["w"], pattern(a.state_bytes // 4, 0))) and state.revision == 1
    c.close()
    return {"admission_s": t1 - t0, "sync_s": t2 - t1, "total_s": t2 - t0, "bytes_received": info.bytes_received,
            "correct": correct}


def latency(a) -> dict:
    """One peer of a group of --world: 4 KiB all-reduces, fresh and out= alternating, each after a barrier."""
    import numpy as np

    c = join_group(communicator(a.master), a.world, timeout=120)
    n = a.size // 4
    x, out, tiny = np.ones(n, np.float32), np.empty(n, np.float32), np.zeros(1, np.float32)
    times = {m: [] for m in MODES}
    y = None
    for i in range(a.warmup + a.iters):
        for mode in (MODES if i % 2 == 0 else MODES[::-1]):
            c.all_reduce(tiny)
            t = time.perf_counter()
            if mode == "fresh":
                y = c.all_reduce(x)
            else:
                c.all_reduce(x, out=out)
            dt = time.perf_counter() - t
            if i >= a.warmup:
                times[mode].append(dt)
    correct = bool(np.all(y == a.world) and np.all(out == a.world))  # sums of ones
    c.close()
    return {"seconds": times, "correct": correct}


def worker_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="join.py _worker")
    ap.add_argument("role", choices=["holder", "newcomer", "latency"])
    ap.add_argument("--master", required=True)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world", type=int, default=0)
    ap.add_argument("--joins", type=int, default=0)
    ap.add_argument("--state-bytes", type=int, default=0)
    ap.add_argument("--ready-dir", default="")
    ap.add_argument("--size", type=int, default=4 * KiB)
    ap.add_argument("--iters", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=0)
    a = ap.parse_args(argv)
    report_result({"holder": holder, "newcomer": newcomer, "latency": latency}[a.role](a))
    return 0


# -- one build ------------------------------------------------------------------------------------------------------
def run_joins(pa, a) -> dict:
    master = pa.Master("127.0.0.1:0").start()
    holders = None
    try:
        with tempfile.TemporaryDirectory(prefix="pccl-join-ready-") as ready:
            holders = start_workers([[__file__, "_worker", "holder", "--master", master.address, "--rank", str(r),
                                      "--joins", str(a.joins), "--state-bytes", str(a.state_bytes),
                                      "--ready-dir", ready] for r in range(HOLDERS)])
            deadline = time.monotonic() + 120
            while len(os.listdir(ready)) < HOLDERS:
                if time.monotonic() > deadline or any(p.poll() is not None for p in holders.procs):
                    holders.wait(0)  # raises with the holders' output
                    raise RuntimeError("the holders did not get ready")
                time.sleep(0.02)
        joins = []
        for _ in range(a.joins):
            joins += start_workers([[__file__, "_worker", "newcomer", "--master", master.address,
                                     "--state-bytes", str(a.state_bytes)]]).wait(120)
        held = holders.wait(120)
    finally:
        if holders is not None:
            holders.close()
        master.stop()
    for k, j in enumerate(joins):
        j["votes"] = max(r["votes"][k] for r in held)
    return {"newcomers": joins, "holder_sync_s": [r["sync_s"] for r in held]}


def run_latency(pa, a, world: int) -> dict:
    master = pa.Master("127.0.0.1:0").start()
    try:
        results = start_workers([[__file__, "_worker", "latency", "--master", master.address, "--world", str(world),
                                  "--size", str(a.size), "--iters", str(a.iters), "--warmup", str(a.warmup)]
                                 for _ in range(world)]).wait(120 + a.iters * 0.1)
    finally:
        master.stop()
    return {m: [max(ts) for ts in zip(*(r["seconds"][m] for r in results))] for m in MODES} | {
        "correct": all(r["correct"] for r in results)}


def measure(a) -> dict:
    """Every sample of one build: the joins, then the latency groups."""
    pa = import_pccl_arrays()
    doc = {"pccl_arrays": pa.__file__, "joins": [], "latency": {}, "errors": []}
    try:
        if a.joins:
            got = run_joins(pa, a)
            doc["joins"], doc["holder_sync_s"] = got["newcomers"], got["holder_sync_s"]
    except Exception as e:  # reported; the latency part goes on
        doc["errors"].append(f"join: {str(e)[:2000]}")
    for n in a.peers:
        try:
            doc["latency"][str(n)] = run_latency(pa, a, n)
        except Exception as e:
            doc["errors"].append(f"latency N={n}: {str(e)[:2000]}")
    return doc


def summarize(samples: dict) -> dict:
    """Medians (with min and max) of one build's pooled samples."""
    joins = samples["joins"]
    s = {"joins": len(joins)}
    for key in ("admission_s", "sync_s", "total_s"):
        if joins:
            s[key] = spread([j[key] for j in joins])
    s["joins_correct"] = all(j["correct"] for j in joins)
    s["joins_needing_more_votes"] = sum(j["votes"] > 1 for j in joins)
    s["latency_s"] = {n: {m: spread(v[m]) for m in MODES} | {"calls": len(v["fresh"]), "correct": v["correct"]}
                      for n, v in samples["latency"].items()}
    return s


def pool(docs: list[dict]) -> dict:
    """One build's samples of several rounds, concatenated."""
    joined = {"joins": [], "latency": {}, "errors": []}
    for d in docs:
        joined["joins"] += d["joins"]
        joined["errors"] += d["errors"]
        for n, v in d["latency"].items():
            dst = joined["latency"].setdefault(n, {m: [] for m in MODES} | {"correct": True})
            for m in MODES:
                dst[m] += v[m]
            dst["correct"] = dst["correct"] and v["correct"]
    return joined


def paired_ratios(runs: dict) -> dict:
    """Each build against the first, round by round: the ratio of its median to the first build's median of the
    same round (runs next to each other), then the median [min-max] of those ratios. Less sensitive to this
    machine's drift over minutes than the ratio of pooled medians."""
    first, *others = list(runs)
    out = {}
    for name in others:
        per_metric: dict[str, list] = {}
        for rnd, d in runs[name].items():
            base = runs[first].get(rnd)
            if base is None:
                continue
            pairs = []
            if d["joins"] and base["joins"]:
                pairs.append(("join_total", [j["total_s"] for j in d["joins"]], [j["total_s"] for j in base["joins"]]))
            for n, v in d["latency"].items():
                if n in base["latency"]:
                    pairs += [(f"N{n}_{m}", v[m], base["latency"][n][m]) for m in MODES]
            for key, mine, theirs in pairs:
                per_metric.setdefault(key, []).append(statistics.median(mine) / statistics.median(theirs))
        out[name] = {key: spread(r) | {"rounds": len(r)} for key, r in per_metric.items()}
    return out


def goals_of(name: str, s: dict) -> list[dict]:
    goals = []
    if "total_s" in s:
        v = s["total_s"]["median"]
        goals.append({"build": name, "goal": "join", "value": v, "met": v <= GOAL_JOIN_S,
                      "text": f"{name}: join of {s['joins']} newcomers, median {v * 1e3:.1f} ms "
                              f"(goal <= {GOAL_JOIN_S * 1e3:.0f} ms)"})
    for m in MODES:
        if "2" in s["latency_s"]:
            v = s["latency_s"]["2"][m]["median"]
            goals.append({"build": name, "goal": f"4KiB_N2_{m}", "value": v, "met": v <= GOAL_4KIB_N2_S,
                          "text": f"{name}: 4 KiB at N=2, {m}: median {v * 1e3:.3f} ms "
                                  f"(goal <= {GOAL_4KIB_N2_S * 1e3:.2f} ms)"})
    return goals


def report(doc: dict) -> None:
    builds = doc["builds"]
    first = next(iter(builds))
    print(f"\nJoin and 4 KiB latency ({doc['machine']['cpu']}, {doc['machine']['cores']} cores shared by every "
          f"process), medians [min-max]; ratio: / {first}")
    print(f"join: {HOLDERS} holders of {fmt_size(doc['config']['state_bytes'])} float32, a newcomer's "
          "Communicator() + connect() (admission) and its first sync_shared_state()")
    print(f"{'build':>10} {'joins':>5} {'admission ms':>22} {'sync ms':>22} {'total ms':>22} {'ratio':>6} "
          f"{'>1 vote':>7}")

    def cell(v):
        return f"{v['median'] * 1e3:.1f} [{v['min'] * 1e3:.1f}-{v['max'] * 1e3:.1f}]".rjust(22)
    for name, s in builds.items():
        if "total_s" not in s:
            continue
        r = s["total_s"]["median"] / builds[first]["total_s"]["median"] if "total_s" in builds[first] else float("nan")
        print(f"{name:>10} {s['joins']:>5} {cell(s['admission_s'])} {cell(s['sync_s'])} {cell(s['total_s'])} "
              f"{r:>6.2f} {s['joins_needing_more_votes']:>7}" + ("" if s["joins_correct"] else " WRONG"))
    print(f"\n{fmt_size(doc['config']['size'])} all-reduce, float32 sum, slowest peer per call, ms")
    print(f"{'build':>10} {'N':>2} {'calls':>6} {'fresh':>22} {'out=':>22} {'fresh ratio':>11} {'out= ratio':>10}")
    for name, s in builds.items():
        for n, v in s["latency_s"].items():
            base = builds[first]["latency_s"].get(n)
            ratios = [v[m]["median"] / base[m]["median"] if base else float("nan") for m in MODES]
            print(f"{name:>10} {n:>2} {v['calls']:>6} " + " ".join(
                f"{v[m]['median'] * 1e3:.3f} [{v[m]['min'] * 1e3:.3f}-{v[m]['max'] * 1e3:.3f}]".rjust(22)
                for m in MODES) + f" {ratios[0]:>11.2f} {ratios[1]:>10.2f}" + ("" if v["correct"] else " WRONG"))
    if doc.get("paired"):
        first = next(iter(builds))
        print(f"\nPaired by round: a build's median / {first}'s median of the same round; median [min-max] over rounds")
        for name, metrics in doc["paired"].items():
            print(f"{name:>10}: " + "  ".join(f"{k} {v['median']:.2f} [{v['min']:.2f}-{v['max']:.2f}]"
                                             for k, v in metrics.items()))
    print_footer(doc)


def main(argv=None) -> int:
    ap = benchmark_parser(__doc__, "join", quick="2 newcomers, 30 all-reduces per mode (CI smoke test)")
    ap.add_argument("--compare", nargs="+", metavar="NAME=SITE",
                    help="builds to compare: a name and the directory to put on PYTHONPATH for it")
    ap.add_argument("--rounds", type=int, help="runs per build, interleaved ABBA (default 4 with --compare, "
                                               "else 1)")
    ap.add_argument("--joins", type=int, help="newcomers per run (default 8; 2 quick; 0: no join part)")
    ap.add_argument("--state-bytes", type=parse_size, default=64 * MiB, help="the shared state (default 64MiB)")
    ap.add_argument("--peers", type=int, nargs="*", default=[2, 3],
                    help="latency group sizes (default 2 3; none: no latency part)")
    ap.add_argument("--size", type=parse_size, default=4 * KiB, help="latency array size (default 4KiB)")
    ap.add_argument("--iters", type=int, help="timed all-reduces per mode and run (default 300; 30 quick)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed all-reduces per mode first (default 20)")
    ap.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)  # a --compare child: samples only
    bench = Run.start(ap, argv)
    a = bench.args
    a.joins = a.joins if a.joins is not None else (2 if a.quick else 8)
    a.iters = a.iters or (30 if a.quick else 300)
    if any(n < 2 for n in a.peers):
        ap.error("--peers must be >= 2")
    if a.raw:  # one build's samples for the --compare parent
        samples = measure(a)
        Path(a.out).write_text(json.dumps(samples))
        return 0
    doc = {"benchmark": "join", "command": ["python", os.path.relpath(__file__), *bench.argv],
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
           "config": {"holders": HOLDERS, "state_bytes": a.state_bytes, "joins_per_run": a.joins,
                      "peers": a.peers, "size": a.size, "iters_per_run": a.iters, "warmup": a.warmup},
           "builds": {}, "samples": {}, "goals": [], "errors": [], "notes": [
               "every process shares this machine's cores; compare builds within one run"]}
    if a.compare:
        builds = dict(spec.split("=", 1) for spec in a.compare)
        rounds = a.rounds or 4
        runs: dict[str, dict] = {name: {} for name in builds}  # name -> round -> that run's samples
        child_args = ["--joins", str(a.joins), "--iters", str(a.iters), "--warmup", str(a.warmup),
                      "--state-bytes", str(a.state_bytes), "--size", str(a.size), "--peers", *map(str, a.peers)]
        for rnd in range(rounds):
            for name in (list(builds) if rnd % 2 == 0 else list(builds)[::-1]):
                sys.stderr.write(f"round {rnd + 1}/{rounds}: {name}\n")
                with tempfile.NamedTemporaryFile(suffix=".json") as f:
                    env = dict(os.environ, PYTHONPATH=os.pathsep.join([builds[name], os.environ.get("PYTHONPATH", "")]))
                    done = subprocess.run([sys.executable, __file__, "--raw", "--out", f.name, *child_args], env=env)
                    if done.returncode != 0:
                        doc["errors"].append(f"{name}, round {rnd + 1}: exit status {done.returncode}")
                        continue
                    runs[name][rnd] = json.loads(Path(f.name).read_text())
        doc["config"]["rounds"] = rounds
        doc["paired"] = paired_ratios(runs)
        doc["config"]["compare"] = builds
    else:
        runs = {"this": dict(enumerate(measure(a) for _ in range(a.rounds or 1)))}
    for name, by_round in runs.items():
        docs = list(by_round.values())
        if not docs:
            continue
        samples = pool(docs)
        doc["errors"] += [f"{name}: {e}" for e in samples.pop("errors")]
        doc["samples"][name] = samples | {"pccl_arrays": docs[0]["pccl_arrays"]}
        doc["builds"][name] = summarize(samples)
        doc["goals"] += goals_of(name, doc["builds"][name])
        if not doc["builds"][name]["joins_correct"] or not all(v["correct"] for v in samples["latency"].values()):
            doc["errors"].append(f"{name}: a wrong result")
    if not doc["builds"]:
        doc["errors"].append("no build produced samples")
        print_footer(doc)
        return 1
    return bench.finish(doc, report)


if __name__ == "__main__":
    sys.exit(script_main(main, worker_main))
