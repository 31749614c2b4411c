"""What the master's HTTP side costs: the master's CPU per collective with HTTP off, and with HTTP on and a
scraper reading /metrics and /status.json every second (a sibling of scale.py).

Usage (from the repository root, in the environment scripts/setup.sh makes)::

    .venv/bin/python benchmarks/monitoring.py            # 4 peers, 3 rounds of each mode: about a minute
    .venv/bin/python benchmarks/monitoring.py --quick    # CI smoke test: 1 round, fewer operations

Each round starts a master in this process (``http=None``, then ``http="127.0.0.1:0"``), N peer processes that
join and all-reduce 4 KiB ``--ops`` times (each preceded by update_topology() every 50 operations, as a loop
would), and, with HTTP on, a scraper process that GETs /metrics and /status.json once a second. Per mode, over
all rounds: the master loop thread's CPU (Master.stats()["cpu_seconds"]) per collective (committed operations
and topology updates), and this process's whole CPU (the loop, the HTTP thread, Python's idle main thread) per
collective. Modes alternate (off, on, off, on, ...) so that a drift of the machine hits both. The goal: the loop
thread's CPU per collective with HTTP on within 5 % of off. All peers share this machine's cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _procs  # noqa: E402
from _common import Run, benchmark_parser, cpu_model, import_pccl_arrays, join_group, print_footer, script_main  # noqa: E402

SCRAPER = """
import sys, time, urllib.request
base = sys.argv[1]
while True:
    for path in ("/metrics", "/status.json"):
        urllib.request.urlopen(base + path, timeout=10).read()
    print("scraped", flush=True)
    time.sleep(1.0)
"""


def worker(a) -> dict:
    import numpy as np
    import pccl_arrays as pa

    c = pa.Communicator(a.master, connections=1, listen="127.0.0.1:0", data_timeout=120.0)
    join_group(c, a.world, timeout=300)
    x, out = np.ones(1024, np.float32), np.empty(1024, np.float32)
    t0 = time.perf_counter()
    for i in range(a.ops):
        if i % 50 == 0:
            c.update_topology()
        c.all_reduce(x, out=out)
    seconds = time.perf_counter() - t0
    assert np.all(out == a.world), "wrong sum"
    c.close()
    return {"seconds": seconds}


def worker_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="monitoring.py _worker")
    ap.add_argument("--master", required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--ops", type=int, required=True)
    _procs.report(worker(ap.parse_args(argv)))
    return 0


def _process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_round(pa, n: int, ops: int, http: bool) -> dict:
    master = pa.Master("127.0.0.1:0", peer_timeout=60.0, http="127.0.0.1:0" if http else None).start()
    scraper = None
    try:
        if http:
            scraper = subprocess.Popen([sys.executable, "-c", SCRAPER, f"http://{master.http_address}"],
                                       stdout=subprocess.PIPE, text=True)
        cpu0 = _process_cpu()
        argvs = [[__file__, "_worker", "--master", master.address, "--world", str(n), "--ops", str(ops)]
                 for _ in range(n)]
        results = _procs.run_group(argvs, timeout=120 + ops / 20)
        cpu = _process_cpu() - cpu0
        stats = master.stats()
    finally:
        scrapes = 0
        if scraper is not None:
            scraper.kill()
            scrapes = scraper.stdout.read().count("scraped")
            scraper.wait()
        master.stop()
    collectives = stats["ops_committed"] + stats["topology_updates"]
    return {"http": http, "collectives": collectives, "loop_cpu_s": stats["cpu_seconds"], "process_cpu_s": cpu,
            "seconds": max(r["seconds"] for r in results), "scrapes": scrapes}


def summary(rows: list[dict], http: bool) -> dict:
    mine = [r for r in rows if r["http"] == http]
    ops = sum(r["collectives"] for r in mine)
    return {"collectives": ops, "loop_us_per_op": sum(r["loop_cpu_s"] for r in mine) / ops * 1e6,
            "process_us_per_op": sum(r["process_cpu_s"] for r in mine) / ops * 1e6,
            "ops_per_s": ops / sum(r["seconds"] for r in mine), "scrapes": sum(r["scrapes"] for r in mine)}


def report(doc: dict) -> None:
    c = doc["config"]
    print(f"\nThe master's CPU per collective, HTTP off vs on with a scraper every second ({c['peers']} peers, "
          f"{c['rounds']} rounds of {c['ops']} all-reduces each; {doc['machine']['cpu']}, "
          f"{doc['machine']['cores']} cores shared by all)")
    print(f"{'mode':<24} {'collectives':>11} {'loop us/op':>11} {'process us/op':>14} {'ops/s':>8} {'scrapes':>8}")
    for name, key in (("HTTP off", "off"), ("HTTP on + scraper", "on")):
        s = doc[key]
        print(f"{name:<24} {s['collectives']:>11} {s['loop_us_per_op']:>11.1f} {s['process_us_per_op']:>14.1f} "
              f"{s['ops_per_s']:>8.0f} {s['scrapes']:>8}")
    print(f"on / off: loop thread {doc['ratio_loop']:.3f}, whole process {doc['ratio_process']:.3f}")
    print_footer(doc)


def main(argv=None) -> int:
    ap = benchmark_parser(__doc__, "monitoring", quick="1 round of 600 operations per mode (CI smoke test)")
    ap.add_argument("--peers", type=int, default=4, help="peer processes (default 4)")
    ap.add_argument("--ops", type=int, help="all-reduces per peer per round (default 4000; 600 quick)")
    ap.add_argument("--rounds", type=int, help="rounds of each mode (default 3; 1 quick)")
    bench = Run.start(ap, argv)
    a = bench.args
    pa = import_pccl_arrays()
    ops = a.ops or (600 if a.quick else 4000)
    rounds = a.rounds or (1 if a.quick else 3)
    doc = {"benchmark": "monitoring", "command": ["python", os.path.relpath(__file__), *bench.argv],
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
           "config": {"peers": a.peers, "ops": ops, "rounds": rounds}, "rows": [], "goals": [], "errors": [],
           "notes": ["all peers and the scraper share this machine's cores; compare the modes within one run"]}
    for i in range(rounds):
        for http in (False, True):
            sys.stderr.write(f"\r[round {i + 1}/{rounds}] HTTP {'on ' if http else 'off'}...   ")
            sys.stderr.flush()
            try:
                doc["rows"].append(run_round(pa, a.peers, ops, http))
            except Exception as e:  # reported; the other rounds go on
                doc["errors"].append(f"round {i + 1}, http={http}: {str(e)[:1500]}")
    sys.stderr.write("\r" + " " * 40 + "\r")
    if any(r["http"] for r in doc["rows"]) and any(not r["http"] for r in doc["rows"]):
        doc["off"], doc["on"] = summary(doc["rows"], False), summary(doc["rows"], True)
        doc["ratio_loop"] = doc["on"]["loop_us_per_op"] / doc["off"]["loop_us_per_op"]
        doc["ratio_process"] = doc["on"]["process_us_per_op"] / doc["off"]["process_us_per_op"]
        doc["goals"].append({"text": "the master loop's CPU per collective with HTTP on and a scraper every second "
                                     "is within 5 % of HTTP off", "met": doc["ratio_loop"] <= 1.05})
        return bench.finish(doc, report)
    return bench.finish(doc, lambda d: print_footer(d))


if __name__ == "__main__":
    sys.exit(script_main(main, worker_main))
