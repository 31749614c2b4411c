"""Helpers every benchmark shares: sizes, summaries, the machine's CPU, finding pccl_arrays, and the report's
end (goals, errors, notes) with the JSON written beside it."""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

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
