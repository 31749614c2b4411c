"""The printed report of benchmarks/quant.py: the tables of its JSON document, for people."""

from __future__ import annotations

import _common
from _quant_scaling import print_scaling


def print_report(doc: dict) -> None:
    m = doc["machine"]
    print()
    print(f"Machine: {m['nproc']} cores ({m['cpu']}), Python {m['python']}, numpy {m['numpy']}, "
          f"pccl_arrays {m['pccl_arrays']}")
    busy = [f"{sec}: {d['section']['others_cores']:.2f}" for sec in ("kernels", "allreduce", "error", "scaling")
            for d in doc.get(sec, {}).get("other_processes", []) if "section" in d]
    if busy:
        print("CPU used by other processes during each section (cores, approximate): " + ", ".join(busy))
    kern = doc.get("kernels")
    if kern:
        print(f"\n1. C++ kernels, one thread, {_common.fmt_size(kern['float32_bytes'])} float32, median [min-max] of "
              f"{kern['repeats']} (GB/s of float32 bytes)")
        mc = next(r for r in kern["rows"] if r["op"] == "memcpy")["GBps"]
        print(f"   memcpy: {mc['median']:.2f} [{mc['min']:.2f}-{mc['max']:.2f}]")
        hdr = f"   {'kind':<9} {'B':>5} | {'quantize':>18} | {'dequantize':>18} | {'reduce_hop':>18} {'(wire)':>6}"
        print(hdr)
        by = {(r["op"], r["kind"], r["block"]): r for r in kern["rows"]}
        for kind in doc["config"]["kinds"]:
            for b in doc["config"]["blocks"]:
                cells = []
                for op in ("quantize", "dequantize", "reduce_hop"):
                    g = by[(op, kind, b)]["GBps"]
                    cells.append(f"{g['median']:.2f} [{g['min']:.2f}-{g['max']:.2f}]".rjust(18))
                w = by[("reduce_hop", kind, b)]["wire_GBps"]["median"]
                print(f"   {kind:<9} {b:>5} | {cells[0]} | {cells[1]} | {cells[2]} {w:6.2f}")
    fk = doc.get("format_kernels")
    if fk:
        print(f"\n1b. C++ kernels of the 4-bit and rotated formats, one thread, "
              f"{_common.fmt_size(fk['float32_bytes'])} float32, median [min-max] of {fk['repeats']} (GB/s of float32 "
              f"bytes; owner = reduce_owner of {fk['owner_peers']} contributions)")
        print(f"   {'kind':<8} {'B':>4} {'rot':>3} | {'quantize':>18} | {'dequantize':>18} | {'hop (ring)':>18} | "
              f"{'owner (direct)':>18} {'(all in)':>8}")
        by = {(r["op"], r["kind"], r["block"], r["rotate"]): r for r in fk["rows"]}
        for kind, b, rot in dict.fromkeys((r["kind"], r["block"], r["rotate"]) for r in fk["rows"]):
            cells = []
            for op in ("quantize", "dequantize", "reduce_hop_exact", "reduce_owner"):
                g = by[(op, kind, b, rot)]["GBps"]
                cells.append(f"{g['median']:.2f} [{g['min']:.2f}-{g['max']:.2f}]".rjust(18))
            allin = by[("reduce_owner", kind, b, rot)]["inputs_GBps"]["median"]
            print(f"   {kind:<8} {b:>4} {'yes' if rot else 'no':>3} | {' | '.join(cells)} {allin:8.2f}")
    ar = doc.get("allreduce")
    if ar and ar["rows"]:
        print(f"\n2. All-reduce algbw on loopback, float32 sum, quantized = {ar['kind']} B={ar['block']} "
              f"reduce={ar.get('reduce', 'direct')} "
              f"(GB/s = float32 bytes / time, time = max over peers; median [min-max])")
        print(f"   NOTE: all peers (and the master) share this machine's {m['nproc']} cores.")
        hdr = (f"   {'N':>2} {'size':>8} {'reps':>4} | {'unquantized GB/s':>22} {'ms':>7} | {'quantized GB/s':>22} "
               f"{'ms':>7} {'ring':>7} | {'q/unq':>5} {'bytes':>5} | {'fresh GB/s':>11} {'ms':>7} {'f/unq':>5}")
        print(hdr)
        for r in ar["rows"]:
            def cell(x):
                g = x["algbw_GBps"]
                bad = "" if x["correct"] else " WRONG"
                return f"{g['median']:.3g} [{g['min']:.3g}-{g['max']:.3g}]{bad}".rjust(22) + \
                    f" {x['latency_ms']['median']:7.2f}"
            u = r["fresh"]
            print(f"   {r['peers']:>2} {r['size']:>8} {r['none']['repeats']:>4} | {cell(r['none'])} | "
                  f"{cell(r['quantized'])} {r['quantized']['core_ms_peer0']['median']:7.2f} | {r['ratio']:5.2f} "
                  f"{r['bytes_sent_ratio']:5.3f} | {u['algbw_GBps']['median']:11.3g} {u['latency_ms']['median']:7.2f} "
                  f"{r['ratio_fresh']:5.2f}")
        print("   ring = the core's ring time on peer 0 (info.seconds, ms); "
              "bytes = bytes sent quantized / unquantized;")
        print("   fresh = y = all_reduce(x, quantization=...): a new result array per call (the buffer pool's)")
    md = doc.get("model")
    if md:
        be = ", ".join(f"N={n}: {v:.2f} GB/s ({v * 8:.1f} Gbit/s)" for n, v in md["break_even_GBps"].items())
        seen = ", ".join(f"N={n}: {v:.2f} GB/s" for n, v in md["loopback_link_seen_GBps"].items())
        print(f"   Model (not measured; from the one-thread kernels at {md['kind']} B={md['block']}): "
              "the quantized ring")
        print(f"   is faster only on links slower than {be}; the unquantized ring saw a link of {seen or '-'} here")
        print("   (algbw * 2(N-1)/N at >= 16 MiB).")
    er = doc.get("error")
    if er and er["rows"]:
        print(f"\n3. Error against the exact sum, {er['elements']} float32 elements per peer "
              f"(ours: {er['rows'][0]['source']}; baseline: per-chunk truncating min-max, NumPy)")
        print(f"   {'N':>2} {'data':<15} {'scheme':<17} {'max |err|':>10} {'p99 |err|':>10} {'rms':>10} {'mean':>10} | "
              f"{'max/base':>8} {'p99/base':>8} {'rms/base':>8}")
        base = {(b["peers"], b["dataset"]): b for b in er["baseline"]}
        default = doc.get("block_choice", {}).get("library_default") or 1024
        for (n, ds), b in base.items():
            print(f"   {n:>2} {ds:<15} {'per-chunk trunc.':<17} {b['max_abs']:10.4g} {b['p99_abs']:10.4g} "
                  f"{b['rms']:10.4g} {b['mean']:10.3g} | {'1':>8} {'1':>8} {'1':>8}")
            for r in er["rows"]:
                if r["peers"] == n and r["dataset"] == ds and (r["kind"] == "minmax" or r["block"] == default):
                    name = f"{r['kind']} B={r['block']}"
                    print(f"   {n:>2} {ds:<15} {name:<17} {r['max_abs']:10.4g} {r['p99_abs']:10.4g} {r['rms']:10.4g} "
                          f"{r['mean']:10.3g} | {r['ratio_max']:8.3f} {r['ratio_p99']:8.3f} {r['ratio_rms']:8.3f}")
        bc = doc.get("block_choice")
        if bc and bc["table"]:
            print(f"\n   Block size ({bc['kind']}): metadata vs error (mean / worst over peers and data sets) vs speed")
            print(f"   {'B':>5} {'meta':>6} {'wire':>6} | {'rms/base':>15} {'max/base':>15} | {'quant':>6} "
                  f"{'dequant':>7} {'hop':>6} GB/s")
            for t in bc["table"]:
                sp = [f"{v:.2f}" if v else "-" for v in (t["quantize_GBps"], t["dequantize_GBps"],
                                                          t["reduce_hop_GBps"])]
                print(f"   {t['block']:>5} {t['overhead']:6.2%} {t['wire_fraction']:6.2%} | "
                      f"{t['ratio_rms_mean']:7.3f} {t['ratio_rms_worst']:7.3f} {t['ratio_max_mean']:7.3f} "
                      f"{t['ratio_max_worst']:7.3f} | {sp[0]:>6} {sp[1]:>7} {sp[2]:>6}")
            print(f"   chosen block: {bc['chosen']} (library default {bc['library_default']}: "
                  f"{'confirmed' if bc['confirmed'] else 'NOT confirmed'}); rule: {bc['rule']}")
    tr = doc.get("triton")
    if tr:
        print("\n4. Triton kernels (CUDA)")
        if not tr["measured"]:
            print(f"   NOT MEASURED: {tr['why']}.")
            print(f"   On a machine with a CUDA GPU (torch with CUDA, triton): {tr['command']}")
        else:
            print(f"   {tr['device']}, {_common.fmt_size(tr['elements'] * 4)} float32, GB/s median [min-max]")
            for r in tr["rows"]:
                g = r["GBps"]
                same = {True: "  (same bytes as the C++ kernel)", False: "  DIFFERENT BYTES from the C++ kernel",
                        None: ""}[r.get("same_bytes_as_host")]
                rot = " rotated" if r.get("rotate") else ""
                print(f"   {r['op']:<10} {r['kind'] or '':<9} {r['block'] or '':>5}{rot:<8}: {g['median']:.1f} "
                      f"[{g['min']:.1f}-{g['max']:.1f}]{same}")
    print_scaling(doc)
    _common.print_footer(doc)
