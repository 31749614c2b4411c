"""Section 2 of benchmarks/quant.py: quantized against unquantized all-reduce bandwidth, peers on loopback."""

from __future__ import annotations

import statistics
import time

import _common
from _common import CpuMeter, wait_for_quiet
from _quant_workers import MODES, run_peers


def bench_allreduce(peers, sizes, reps_per_round, rounds, kind, block, connections, timeout, log, errors,
                    reduce: str = "direct") -> dict:
    runs: dict[int, list[list[dict]]] = {}
    others: list[dict] = []
    for rnd in range(rounds):
        log(f"-- all-reduce round {rnd + 1}/{rounds}")
        for n in peers:
            first = "none" if (rnd + n) % 2 == 0 else "quantized"
            wait_for_quiet(f"round {rnd + 1} N={n}", log)
            t = time.monotonic()
            meter = CpuMeter()
            try:
                res = run_peers(n, ["bw", "--sizes", ",".join(map(str, sizes)),
                                    "--repeats", ",".join(map(str, reps_per_round)), "--kind", kind, "--reduce", reduce,
                                    "--block", str(block), "--first", first, "--connections", str(connections)],
                                timeout)
            except Exception as e:
                errors.append(f"all-reduce with {n} peers failed in round {rnd + 1}: {e}")
                log(f"ERROR: {errors[-1]}")
                continue
            runs.setdefault(n, []).append(res)
            busy = meter.stop()
            others.append({"round": rnd + 1, "peers": n, **busy})
            summary = ", ".join(f"{_common.fmt_size(r['bytes'])}: " + " / ".join(
                f"{statistics.median(r[m]['seconds']) * 1e3:.1f}" for m in MODES) + " ms" for r in res[0]["rows"])
            log(f"  N={n} [{time.monotonic() - t:.1f} s, other processes used {busy['others_cores']:.2f} cores] "
                f"peer 0 median {' / '.join(MODES)}: {summary}")
    rows = []
    for n, rnds in runs.items():
        for i, size in enumerate(sizes):
            row = {"peers": n, "bytes": size, "size": _common.fmt_size(size)}
            for m in MODES:
                per_peer = [sum((rnd[p]["rows"][i][m]["seconds"] for rnd in rnds), []) for p in range(n)]
                core = [sum((rnd[p]["rows"][i][m]["core_seconds"] for rnd in rnds), []) for p in range(n)]
                worst = [max(ts) for ts in zip(*per_peer)]
                checks = [ch for rnd in rnds for p in range(n) for ch in rnd[p]["rows"][i][m]["checks"]]
                # the same result bytes on every peer (per check point: warm-up and last repeat, per round)
                same = all(len({rnd[p]["rows"][i][m]["checks"][j]["sha"] for p in range(n)}) == 1
                           for rnd in rnds for j in range(len(rnd[0]["rows"][i][m]["checks"])))
                row[m] = {"repeats": len(worst), "algbw_GBps": _common.spread([size / t / 1e9 for t in worst]),
                          "latency_ms": _common.spread([t * 1e3 for t in worst]),
                          "core_ms_peer0": _common.spread([t * 1e3 for t in core[0]]),
                          "bytes_sent_peer0": rnds[0][0]["rows"][i][m]["bytes_sent"],
                          "correct": all(ch["ok"] for ch in checks) and same, "identical_on_peers": same,
                          "seconds_per_peer": per_peer}
                if m != "none":
                    row[m]["max_error"] = max(ch["max_error"] for ch in checks)
                    row[m]["error_bound"] = checks[0]["bound"]
                if not row[m]["correct"]:
                    errors.append(f"N={n} {row['size']} {m}: WRONG all-reduce result "
                                  f"({'differs between peers' if not same else 'outside the bound'})")
            row["ratio"] = row["quantized"]["algbw_GBps"]["median"] / row["none"]["algbw_GBps"]["median"]
            row["ratio_fresh"] = row["fresh"]["algbw_GBps"]["median"] / row["none"]["algbw_GBps"]["median"]
            row["fresh_same_bytes"] = all(
                rnd[p]["rows"][i]["fresh"]["checks"][j]["sha"] == rnd[p]["rows"][i]["quantized"]["checks"][j]["sha"]
                for rnd in rnds for p in range(n) for j in range(len(rnd[p]["rows"][i]["fresh"]["checks"])))
            if not row["fresh_same_bytes"]:
                errors.append(f"N={n} {row['size']}: a fresh quantized result differs from the out= one")
            row["bytes_sent_ratio"] = row["quantized"]["bytes_sent_peer0"] / max(1, row["none"]["bytes_sent_peer0"])
            rows.append(row)
    rows.sort(key=lambda r: (r["peers"], r["bytes"]))
    return {"kind": kind, "block": block, "reduce": reduce, "connections": connections, "rounds": rounds,
            "repeats_per_round": reps_per_round, "rows": rows, "other_processes": others,
            "timing": "per repeat: a 4-byte all-reduce as barrier, then one timed all_reduce(x, out=y[, quantization]) "
                      "on each peer; time = max over peers; algbw = float32 array bytes / time; GB/s = 1e9 B/s; the "
                      "three modes rotate repeat by repeat (ABC, CBA) in the same group of peers; "
                      "core_ms = the core's own time for the ring (info.seconds), peer 0"}
