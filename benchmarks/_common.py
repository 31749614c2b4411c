"""Helpers every benchmark shares: sizes, summaries, the machine's CPU, finding pccl_arrays, the start of a
benchmark's main() (its command line, its clock) and of a worker (joined, behind a WAN relay when asked), and
the report's end (goals, errors, notes) with the JSON written beside it."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import _procs

HERE = Path(__file__).resolve().parent
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(i?B?)\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4KiB, 16MiB, 4096)")
    mult = {"": 1, "K": KiB, "M": MiB, "G": GiB}[m.group(2).upper()]
    n = int(float(m.group(1)) * mult)
    if n < 4 or n % 4:
        raise argparse.ArgumentTypeError(f"size {text!r} must be a positive multiple of 4 bytes (float32)")
    return n


def fmt_size(n: int) -> str:
    for unit, m in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= m and n % m == 0:
            return f"{n // m} {unit}"
    return f"{n} B"


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def import_pccl_arrays():
    """pccl_arrays as installed (or on PYTHONPATH), else from this checkout; workers get the same one."""
    try:
        import pccl_arrays
    except ImportError:
        sys.path.insert(1, str(HERE.parent))
        sys.modules.pop("pccl_arrays", None)
        import pccl_arrays
    _procs.EXTRA_PATHS[:] = [str(Path(pccl_arrays.__file__).resolve().parents[1])]
    return pccl_arrays


# -- a benchmark's main() -------------------------------------------------------------------------------------------
def script_main(main: Callable[[list[str]], int], worker_main: Optional[Callable[[list[str]], int]] = None) -> int:
    """A benchmark script's entry point: ``SCRIPT _worker ARGS`` is one of its worker processes (the benchmark
    starts them so), anything else is the benchmark, with the command line's arguments."""
    argv = sys.argv[1:]
    if worker_main is not None and argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    return main(argv)


def benchmark_parser(doc: str, name: str, quick: str) -> argparse.ArgumentParser:
    """A benchmark's command line, described by the first paragraph of its docstring `doc`: ``--quick`` (`quick`
    says what it makes small) and ``--out`` (the JSON document; default results/NAME.json beside the benchmarks)
    to begin with."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--out", default=str(HERE / "results" / f"{name}.json"), help="JSON output path")
    return ap


@dataclass
class Run:
    """One run of a benchmark: its arguments (``argv``, parsed: ``args``) and when it started, for the runtime
    its JSON document records."""

    argv: list[str]
    args: argparse.Namespace
    t_start: float

    @classmethod
    def start(cls, ap: argparse.ArgumentParser, argv: Optional[list[str]] = None) -> "Run":
        """Parses ``argv`` (default: the command line's) and starts the clock."""
        argv = sys.argv[1:] if argv is None else argv
        return cls(argv, ap.parse_args(argv), time.monotonic())

    def finish(self, doc: dict, report) -> int:
        """Writes the document to ``--out`` and prints the report; the exit status: 1 if the run had errors."""
        save_and_report(doc, self.args.out, self.t_start, report)
        return 1 if doc["errors"] else 0


# -- a worker -------------------------------------------------------------------------------------------------------
def join_worker(master: str, world: int, relay_profile: Optional[str] = None, timeout: float = 120.0, **kw):
    """A worker's Communicator (``kw``: its options), joined into a group of `world` peers; returns (communicator,
    relay). With `relay_profile` (a pccl_arrays.wan profile), its data port sits behind a relay of its own, whose
    address it advertises, so that every byte the others send it crosses the emulated path; else relay is None.
    Stop the relay after closing the communicator."""
    import pccl_arrays as pa
    from pccl_arrays import wan

    relay = wan.Relay(None, relay_profile).start() if relay_profile else None
    if relay:
        kw["advertise"] = relay.address
    c = pa.Communicator(master, **{"listen": "127.0.0.1:0", "data_timeout": 60.0, **kw})
    if relay:
        relay.follow(c)
    join_group(c, world, timeout=timeout)
    return c, relay


def join_group(c, world: int, timeout: float = 120.0):
    """Connects a worker's Communicator and votes newcomers in until the group has `world` peers; returns it."""
    c.connect(timeout=timeout)
    c.wait_for_peers(world)
    return c


def timed_calls(reps: int, reset, barrier, run) -> list[float]:
    """``reps`` timed calls of ``run()``: each after ``reset()`` (untimed) and ``barrier()`` (the peers line up);
    the seconds of each."""
    times = []
    for _ in range(reps):
        reset()
        barrier()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


def systems_to_run(requested: list, why_no_gloo, notes: list, errors: list) -> tuple[list, object]:
    """The systems a pccl-vs-gloo benchmark can run, and pccl_arrays' version: gloo leaves with a note when
    torch cannot run it (``why_no_gloo``), pccl with an error when pccl_arrays cannot be imported."""
    systems = list(requested)
    if "gloo" in systems and why_no_gloo:
        systems.remove("gloo")
        notes.append(f"gloo column skipped: {why_no_gloo}")
        print(f"NOTE: {notes[-1]}", flush=True)
    try:
        return systems, import_pccl_arrays().__version__
    except Exception as e:
        if "pccl" in systems:
            systems.remove("pccl")
            errors.append(f"pccl_arrays cannot be imported ({type(e).__name__}: {e})")
            print(f"ERROR: {errors[-1]}", flush=True)
        return systems, None


def doc_head(benchmark: str, script: str, argv: list, torch_version, pccl_version) -> dict:
    """The fields every benchmark's JSON document starts with: its name, when, the command, the machine."""
    import datetime

    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"benchmark": benchmark, "created": created, "command": ["python", os.path.relpath(script), *argv],
            "machine": machine_info(torch_version, pccl_version)}


def machine_info(torch_version, pccl_version) -> dict:
    """The machine block of a benchmark's JSON document."""
    import numpy as np

    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch_version,
            "pccl_arrays": pccl_version}


def print_footer(doc: dict) -> None:
    """Goals, errors and notes: the end of every benchmark's report."""
    if doc["goals"]:
        print("\nGoals (on this machine):")
        for g in doc["goals"]:
            print(f"  [{'met ' if g['met'] else 'MISS'}] {g['text']}")
    for e in doc["errors"]:
        print(f"ERROR: {e}")
    for note in doc["notes"]:
        print(f"NOTE: {note}")


def save_and_report(doc: dict, out_path: str, t_start: float, report) -> None:
    """Stamps the runtime, writes the JSON document and prints the report."""
    doc["runtime_s"] = time.monotonic() - t_start
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    report(doc)
    print(f"\nsaved {out} (runtime {doc['runtime_s']:.1f} s)")


def pattern(n: int, rank: int):
    """A peer's float32 array: i % 7 + rank (small integers: sums are exact in any order)."""
    import numpy as np
    return (np.arange(n, dtype=np.int32) % 7).astype(np.float32) + np.float32(rank)


def expected_sum(n: int, world: int):
    import numpy as np
    # sum over ranks r of (i % 7 + r): small integers, exact in float32 whatever the order of the additions
    base = (np.arange(n, dtype=np.int32) % 7).astype(np.float32)
    return base * np.float32(world) + np.float32(world * (world - 1) // 2)


class CpuMeter:
    """CPU time used on this machine by processes other than this benchmark and its children (approximate):
    busy user + nice + system time of /proc/stat minus this process's and its waited-for children's time.
    Other work on the machine (another test suite, a build) shows here; the benchmark's own softirq time does
    not count as busy."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.monotonic(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float:
        try:
            with open("/proc/stat") as f:
                v = f.readline().split()[1:]
            return (int(v[0]) + int(v[1]) + int(v[2])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return float("nan")

    @staticmethod
    def _own() -> float:
        import resource
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def stop(self) -> dict:
        wall = time.monotonic() - self.t0
        others = max(0.0, (self._busy() - self.busy0) - (self._own() - self.own0))
        return {"wall_s": wall, "others_cpu_s": others, "others_cores": others / wall if wall > 0 else 0.0}


QUIET_WAIT = {"limit_s": 0.0, "waits": []}  # --quiet-wait: see wait_for_quiet


def wait_for_quiet(label: str, log, threshold: float = 0.15, window: float = 2.0) -> None:
    """Waits (up to --quiet-wait seconds, 0: not at all) until other processes use less than `threshold` cores
    over a `window`-second sample, so that a group of peers or a section does not start while another job runs."""
    limit = QUIET_WAIT["limit_s"]
    if limit <= 0:
        return
    t0 = time.monotonic()
    while True:
        m = CpuMeter()
        time.sleep(window)
        busy = m.stop()["others_cores"]
        waited = time.monotonic() - t0
        if busy < threshold or waited >= limit:
            QUIET_WAIT["waits"].append({"before": label, "waited_s": waited, "others_cores_last": busy,
                                        "quiet": busy < threshold})
            if waited > window + 0.5 or busy >= threshold:
                log(f"  waited {waited:.0f} s for other processes to go quiet before {label} "
                    f"({'quiet' if busy < threshold else f'still {busy:.2f} cores busy, going on'})")
            return
