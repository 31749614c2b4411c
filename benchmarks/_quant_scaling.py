"""Section "scaling" of benchmarks/quant.py: the error of the quantized all-reduce against the number of peers
N = 2..8, for the ring and the direct reduce-scatter, 8 bits (minmax) and 4 bits (minmax4) with and without
rotation, on normal, Student-t and real (DiLoCo) data. The results come from an exact simulation with the core's
kernels (_quant_sim.simulate), and one group of real peer processes (N = 3, both reduce-scatters, 4 bits rotated)
checks that the simulation gives the real all-reduce's bits."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

from _quant_data import SCALING_DATASETS, load_real, synthetic
from _quant_sim import quantize_all, simulate
from _quant_workers import ALL_KINDS, run_peers

# (label, kind, block, rotate): the library's default block of each kind
FORMATS = [("8-bit", "minmax", 1024, False), ("8-bit rot", "minmax", 1024, True),
           ("4-bit", "minmax4", 512, False), ("4-bit rot", "minmax4", 512, True)]
REDUCES = ("ring", "direct")
GROUP = 1024  # elements per group of the mean's standard error: whole blocks of every format (1024 and 512)
CHECK = {"kind": "minmax4", "block": 512, "rotate": True, "peers": 3}

GOAL_ROTATION = 0.5  # rotation at least halves the rms error on Student-t data
GOAL_GROWTH = 1.3  # direct: relative rms error at N = 8 <= 1.3x that at N = 2
GOAL_BIAS_SE = 3.0  # |mean error| within 3 standard errors of 0


def error_stats(result, exact, exact_rms: float) -> dict:
    """max |e|, rms, both relative to the exact sum's rms, and the bias: mean e with its standard error (from the
    means of GROUP-element groups, so errors correlated within a block count once per group)."""
    import numpy as np
    e = result.astype(np.float64) - exact
    rms = float(np.sqrt(np.mean(e * e)))
    mean = float(np.mean(e))
    groups = e.size // GROUP
    if groups >= 2:
        se = float(np.std(e[:groups * GROUP].reshape(groups, GROUP).mean(axis=1), ddof=1) / math.sqrt(groups))
    else:
        se = float(np.std(e, ddof=1) / math.sqrt(e.size))
    max_abs = float(np.max(np.abs(e)))
    return {"max_abs": max_abs, "rms": rms, "max_rel": max_abs / exact_rms, "rms_rel": rms / exact_rms,
            "mean": mean, "mean_se": se, "mean_z": mean / se if se > 0 else (0.0 if mean == 0 else math.inf)}


def _study(name: str, xs, seed: int, log) -> list[dict]:
    """Every format, reduce-scatter and N = 2..len(xs) on one data set; the peers are xs[0..N)."""
    import numpy as np
    rows = []
    exacts = []
    acc = np.zeros(xs[0].size, np.float64)
    for x in xs:
        acc += x
        exacts.append(acc.copy())
    for label, kind, block, rotate in FORMATS:
        t = time.monotonic()
        rseed = seed if rotate else None
        qs = [quantize_all(x, ALL_KINDS[kind], block, rseed) for x in xs]
        for world in range(2, len(xs) + 1):
            exact = exacts[world - 1]
            exact_rms = float(np.sqrt(np.mean(exact * exact)))
            for reduce in REDUCES:
                got = simulate(xs[:world], ALL_KINDS[kind], block, None, rseed, reduce, qs[:world])
                rows.append({"dataset": name, "peers": world, "format": label, "kind": kind, "block": block,
                             "rotate": rotate, "reduce": reduce, "exact_rms": exact_rms,
                             **error_stats(got, exact, exact_rms)})
        log(f"  scaling {name} {label}: N = 2..{len(xs)}, ring and direct, {time.monotonic() - t:.1f} s")
    return rows


def bench_scaling(peers: list[int], n: int, real_path, seed: int, log) -> dict:
    top = max(peers)
    rows, datasets = [], {}
    for name in ("normal", "student-t"):
        xs = [synthetic(name, n, r, seed) for r in range(top)]
        datasets[name] = {"description": SCALING_DATASETS[name], "elements": n, "peers": top}
        rows += [r for r in _study(name, xs, seed, log) if r["peers"] in peers]
        del xs
    xs, info = load_real(Path(real_path), n, top)
    datasets["real"] = {"description": SCALING_DATASETS["real"], **info}
    if xs is None:
        log(f"  scaling: the real data set is SKIPPED: {info['skipped']}")
    else:
        if "note" in info:
            log(f"  scaling: {info['note']}")
        rows += [r for r in _study("real", xs, seed, log) if r["peers"] in peers]
    return {"elements": n, "peers": peers, "seed": seed, "formats": [list(f) for f in FORMATS],
            "datasets": datasets, "rows": rows,
            "definition": "error e = result - exact, exact = float64 sum of the N peers' float32 inputs (peer i: its "
                          "own seed, or round i of the real data); max_rel and rms_rel = max |e| and rms(e) / rms "
                          "of the exact sum; mean = mean e, mean_se its standard error from the means of "
                          f"{GROUP}-element groups, mean_z = mean / mean_se. Results: exact simulation with the "
                          "core's kernels (quantize, reduce_hop_exact or reduce_owner, dequantize), ring order = the "
                          "identity; rotation seed = --seed; the `check` section holds it to a real all-reduce."}


def bench_check(n: int, seed: int, connections: int, timeout: float, log, errors: list) -> dict:
    """N = 3 real peer processes all-reduce Student-t data with 4-bit rotated blocks, ring and direct; the
    simulation in the ring order the master chose (Communicator.ring()) must give the same bits."""
    import itertools
    import numpy as np
    world, kind, block = CHECK["peers"], CHECK["kind"], CHECK["block"]
    out = {**CHECK, "elements": n, "seed": seed, "rows": []}
    tmp = tempfile.mkdtemp(prefix="pccl_quant_chk_")
    try:
        t = time.monotonic()
        try:
            res = run_peers(world, ["chk", "--n", str(n), "--seed", str(seed), "--kind", kind, "--block", str(block),
                                    "--rotate", "--reduces", ",".join(REDUCES), "--outdir", tmp,
                                    "--connections", str(connections)], timeout)
        except Exception as e:
            errors.append(f"scaling check: the all-reduces of {world} peers failed: {e}")
            log(f"ERROR: {errors[-1]}")
            return out
        rank_of = {r["peer_id"]: rank for rank, r in enumerate(res)}
        order = [rank_of[p] for p in res[0]["ring"]]
        xs = [synthetic("student-t", n, r, seed) for r in range(world)]
        qs = [quantize_all(x, ALL_KINDS[kind], block, seed) for x in xs]
        for reduce in REDUCES:
            got = np.load(Path(tmp) / res[0]["files"][reduce])
            sim = simulate(xs, ALL_KINDS[kind], block, order, seed, reduce, qs)
            row = {"reduce": reduce, "ring_order": order,
                   "identical_on_peers": len({r["shas"][reduce] for r in res}) == 1,
                   "matches_simulation": bool(np.array_equal(got.view(np.uint32), sim.view(np.uint32)))}
            if not row["matches_simulation"]:  # which order would (a wrong ring()) or none (a wrong simulation)
                row["orders_that_match"] = [list(p) for p in itertools.permutations(range(world)) if np.array_equal(
                    got.view(np.uint32), simulate(xs, ALL_KINDS[kind], block, p, seed, reduce, qs).view(np.uint32))]
            if not (row["identical_on_peers"] and row["matches_simulation"]):
                errors.append(f"scaling check {reduce}: the all-reduce results "
                              + ("differ between peers" if not row["identical_on_peers"] else
                                 f"do not match the simulation (orders that do: {row.get('orders_that_match')})"))
            out["rows"].append(row)
            log(f"  check N={world} {kind} B={block} rotated, {reduce}: "
                f"{'bitwise equal to the simulation' if row['matches_simulation'] else 'DIFFERENT from the simulation'}"
                f", {'the same' if row['identical_on_peers'] else 'DIFFERENT'} on every peer")
        out["runtime_s"] = time.monotonic() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _sel(rows, **kw):
    return [r for r in rows if all(r[k] == v for k, v in kw.items())]


def scaling_goals(doc: dict) -> list[dict]:
    sc = doc.get("scaling")
    if not sc or not sc["rows"]:
        return []
    rows, goals = sc["rows"], []
    # rotation halves the rms error on Student-t data, at 4 and at 8 bits (every N), for each reduce-scatter
    for bits, plain, rotated in (("4-bit", "4-bit", "4-bit rot"), ("8-bit", "8-bit", "8-bit rot")):
        for red in REDUCES:
            ratios = {}
            for r in _sel(rows, dataset="student-t", format=rotated, reduce=red):
                p = _sel(rows, dataset="student-t", format=plain, peers=r["peers"], reduce=red)
                if p:
                    ratios[r["peers"]] = r["rms"] / p[0]["rms"]
            if not ratios:
                continue
            worst = max(ratios, key=ratios.get)
            goals.append({"goal": "rotation_halves_error", "bits": bits, "reduce": red, "value": ratios[worst],
                          "met": ratios[worst] <= GOAL_ROTATION,
                          "text": f"Student-t, {bits}, {red}: rms error rotated / unrotated = "
                                  f"{min(ratios.values()):.2f}-{ratios[worst]:.2f} over N = "
                                  f"{min(ratios)}..{max(ratios)} (worst at N={worst}; goal <= {GOAL_ROTATION})"})
    # direct: relative rms error at the largest N <= 1.3x that at N = 2; the ring's ratio beside it
    for ds in sc["datasets"]:
        for label, *_ in FORMATS:
            sel = _sel(rows, dataset=ds, format=label)
            if not sel:
                continue
            top = max(r["peers"] for r in sel)
            ratio = {red: _sel(sel, reduce=red, peers=top)[0]["rms_rel"] / _sel(sel, reduce=red, peers=2)[0]["rms_rel"]
                     for red in REDUCES}
            goals.append({"goal": "direct_error_growth", "dataset": ds, "format": label, "peers": top,
                          "value": ratio["direct"], "ring": ratio["ring"], "met": ratio["direct"] <= GOAL_GROWTH,
                          "text": f"{ds}, {label}: relative rms error N={top} / N=2 = {ratio['direct']:.2f} direct "
                                  f"(goal <= {GOAL_GROWTH}); ring {ratio['ring']:.2f}"})
    # unbiased: every row's mean error within 3 standard errors of 0, per format and reduce-scatter
    for label, *_ in FORMATS:
        for red in REDUCES:
            sel = _sel(rows, format=label, reduce=red)
            worst = max(sel, key=lambda r: abs(r["mean_z"]))
            ok = sum(abs(r["mean_z"]) <= GOAL_BIAS_SE for r in sel)
            goals.append({"goal": "unbiased", "format": label, "reduce": red, "value": abs(worst["mean_z"]),
                          "met": ok == len(sel),
                          "text": f"{label}, {red}: |mean error| <= {GOAL_BIAS_SE:g} standard errors in {ok} of "
                                  f"{len(sel)} cases (worst {abs(worst['mean_z']):.2f} SE: {worst['dataset']} "
                                  f"N={worst['peers']})"})
    for r in doc.get("scaling_check", {}).get("rows", []):
        goals.append({"goal": "simulation_is_exact", "reduce": r["reduce"], "value": r["matches_simulation"],
                      "met": r["matches_simulation"] and r["identical_on_peers"],
                      "text": f"real all-reduce of 3 peers, {CHECK['kind']} B={CHECK['block']} rotated, "
                              f"{r['reduce']}: bitwise equal to the simulation"})
    return goals


def print_scaling(doc: dict) -> None:
    sc = doc.get("scaling")
    if not sc:
        return
    print(f"\n5. Error against peers, {sc['elements']} float32 elements per peer (exact simulation with the core's "
          f"kernels); relative = / rms of the exact sum")
    for ds, info in sc["datasets"].items():
        sel = _sel(sc["rows"], dataset=ds)
        if not sel:
            print(f"\n   {ds}: SKIPPED: {info.get('skipped', 'no rows')}")
            continue
        what = info["description"] if ds != "real" else (
            f"DiLoCo pseudo-gradients from {info['path']}: peer i contributes round i ({', '.join(info['keys'])}), "
            f"the first {info['elements']} elements of each")
        print(f"\n   {ds}: {what}")
        ns = sorted({r["peers"] for r in sel})
        print(f"   {'format':<10} {'reduce':<7}" + "".join(f" {'N=' + str(n):>7}" for n in ns)
              + f" | {'Nmax/N2':>7} | {'max rel N=2, Nmax':>19} | bias: mean (mean/SE), worst case")
        for label, *_ in FORMATS:
            for red in REDUCES:
                rs = sorted(_sel(sel, format=label, reduce=red), key=lambda r: r["peers"])
                if not rs:
                    continue
                worst = max(rs, key=lambda r: abs(r["mean_z"]))
                print(f"   {label:<10} {red:<7}" + "".join(f" {r['rms_rel']:7.4f}" for r in rs)
                      + f" | {rs[-1]['rms_rel'] / rs[0]['rms_rel']:7.2f} | {rs[0]['max_rel']:9.4f} "
                      f"{rs[-1]['max_rel']:9.4f} | {worst['mean']:+.2e} ({worst['mean_z']:+.2f} SE, "
                      f"N={worst['peers']})")
    print("   (columns N=..: relative rms error; Nmax/N2: the largest N's over N=2's; max rel: max |error| / rms of "
          "the exact sum;\n   bias: the case with the largest |mean error| / standard error)")
    chk = doc.get("scaling_check")
    if chk and chk["rows"]:
        print(f"\n   Check: {chk['peers']} peer processes, {chk['kind']} B={chk['block']} rotated, Student-t, "
              f"{chk['elements']} elements, ring order {chk['rows'][0]['ring_order']}: " + ", ".join(
                  f"{r['reduce']} {'bitwise equal to the simulation' if r['matches_simulation'] else 'DIFFERENT'}"
                  for r in chk["rows"]))
