"""The comparison of the example's README: one worker, 4 sync-DiLoCo peers, 4 async peers, and 4 sync peers with
each compression of the outer all-reduce (--outer-quant 8, 4, 4+rotate, 4+rotate+ef); the same inner steps per
peer. Prints and writes a table of the --outer-quant modes (final loss and accuracy, bytes per outer step),
writes results/summary.json and results/loss_curves.png.

    python compare.py [--rounds 60] [--inner-steps 25] [--out results] [--outer-quant-only] [--repeats 1]

Runs are bitwise reproducible only for the same ring order of the peers, which follows the order in which they
connect and can change from run to run; the order of the float32 additions changes with it, which moves the
float32 runs by an ulp here and there and the quantized runs by more (a sum that lands on the other side of a
rounding boundary takes another code). --repeats shows the spread.

Needs matplotlib for the plot (the example's README command installs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import launch

HERE = Path(__file__).resolve().parent

RUNS = {
    "1 worker": dict(peers=1, mode="sync"),
    "4 peers, sync DiLoCo": dict(peers=4, mode="sync"),
    "4 peers, async DiLoCo": dict(peers=4, mode="async", extra=["--outer-lr", "0.3", "--outer-momentum", "0.5"]),
    "4 peers, sync, uint8 (minmax)": dict(peers=4, mode="sync", outer_quant="8"),
    "4 peers, sync, 4-bit": dict(peers=4, mode="sync", outer_quant="4"),
    "4 peers, sync, 4-bit + rotation": dict(peers=4, mode="sync", outer_quant="4+rotate"),
    "4 peers, sync, 4-bit + rotation + error feedback": dict(peers=4, mode="sync", outer_quant="4+rotate+ef"),
}
# The --outer-quant table: these runs differ only in how the pseudo-gradient travels.
OUTER_QUANT_RUNS = {"none": "4 peers, sync DiLoCo", "8": "4 peers, sync, uint8 (minmax)", "4": "4 peers, sync, 4-bit",
                    "4+rotate": "4 peers, sync, 4-bit + rotation",
                    "4+rotate+ef": "4 peers, sync, 4-bit + rotation + error feedback"}
GOAL_ACC_POINTS, GOAL_LOSS_REL, GOAL_FEWER_BYTES = 0.5, 0.01, 8.0


def bytes_per_outer_step(peers: list[dict]) -> float:
    """One peer's AllReduceInfo.bytes_sent per committed round, averaged over the peers (0: one worker)."""
    if not all(p["allreduce_rounds"] for p in peers):
        return 0.0
    return sum(p["allreduce_bytes_sent"] / p["allreduce_rounds"] for p in peers) / len(peers)


def runs_dir(out: Path) -> Path:
    """Where the runs' logs go: OUT/runs, or results/runs/SUB for an --out of results/SUB (which git ignores)."""
    results = (HERE / "results").resolve()
    o = out.resolve()
    if o != results and o.is_relative_to(results):
        return results / "runs" / o.relative_to(results)
    return out / "runs"


def outer_quant_table(runs: dict) -> list[dict]:
    """One row per --outer-quant mode that ran: final loss and accuracy, bytes per outer step (one peer's
    AllReduceInfo.bytes_sent, averaged over the peers and the rounds), and the differences to the float32 run."""
    base = runs.get(OUTER_QUANT_RUNS["none"])
    rows = []
    for mode, name in OUTER_QUANT_RUNS.items():
        if name not in runs:
            continue
        r = runs[name]
        row = {"outer_quant": mode, "eval_loss": r["final_eval_loss"], "eval_acc": r["final_eval_acc"],
               "bytes_per_outer_step": r["bytes_per_outer_step"], "repeats": len(r["repeats"]),
               "eval_loss_range": [min(f["eval_loss"] for f in r["repeats"]), max(f["eval_loss"] for f in r["repeats"])],
               "eval_acc_range": [min(f["eval_acc"] for f in r["repeats"]), max(f["eval_acc"] for f in r["repeats"])]}
        if base is not None:
            row["acc_points_vs_none"] = 100 * (r["final_eval_acc"] - base["final_eval_acc"])
            row["loss_rel_vs_none"] = r["final_eval_loss"] / base["final_eval_loss"] - 1
            row["fewer_bytes_than_none"] = base["bytes_per_outer_step"] / r["bytes_per_outer_step"]
            row["goal"] = bool(mode.startswith("4+rotate") and row["fewer_bytes_than_none"] >= 0.95 * GOAL_FEWER_BYTES
                               and (row["acc_points_vs_none"] >= -GOAL_ACC_POINTS
                                    or row["loss_rel_vs_none"] <= GOAL_LOSS_REL))
        rows.append(row)
    return rows


def print_outer_quant_table(rows: list[dict]) -> None:
    print("\n| --outer-quant | eval loss | accuracy | bytes per outer step | fewer bytes | accuracy vs none | "
          "loss vs none |\n|---|---|---|---|---|---|---|")
    for r in rows:
        vs = (f"{r['fewer_bytes_than_none']:.2f}x | {r['acc_points_vs_none']:+.2f} points | "
              f"{100 * r['loss_rel_vs_none']:+.2f}% |") if "fewer_bytes_than_none" in r else "– | – | – |"
        loss, acc = f"{r['eval_loss']:.3f}", f"{r['eval_acc']:.3f}"
        if r["repeats"] > 1:
            loss += " ({:.3f}–{:.3f})".format(*r["eval_loss_range"])
            acc += " ({:.3f}–{:.3f})".format(*r["eval_acc_range"])
        print(f"| {r['outer_quant']} | {loss} | {acc} | {r['bytes_per_outer_step']:,.0f} | {vs}")
    met = [r["outer_quant"] for r in rows if r.get("goal")]
    print(f"\ngoal (4-bit + rotation within {GOAL_ACC_POINTS} accuracy points or {100 * GOAL_LOSS_REL:.0f}% loss of the "
          f"unquantized run, at about {GOAL_FEWER_BYTES:.0f}x fewer bytes per outer step): "
          + (f"met by {', '.join(met)}" if met else "not met"), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--inner-steps", type=int, default=25)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--outer-quant-only", action="store_true", help="only the five runs of the --outer-quant table")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run each R times; the tables show the mean (and the range) of the final loss and accuracy")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"rounds": a.rounds, "inner_steps": a.inner_steps, "repeats": a.repeats, "runs": {}}
    runs = {n: c for n, c in RUNS.items() if not a.outer_quant_only or n in OUTER_QUANT_RUNS.values()}
    for name, cfg in runs.items():
        print(f"== {name}", flush=True)
        reps = []
        for rep in range(a.repeats):
            tail = "" if a.repeats == 1 else f"_{rep}"
            s = launch.run(rounds=a.rounds, inner_steps=a.inner_steps,
                           out=str(runs_dir(out) / (name.replace(" ", "_").replace(",", "") + tail)), quiet=True, **cfg)
            if s["errors"] or not s["identical"]:
                print(json.dumps(s["errors"], indent=1), file=sys.stderr)
                return 1
            reps.append(s)
            peers = list(s["per_peer"].values())
            ar, ar_wait = (sum(p[k] for p in peers) / len(peers) for k in ("allreduce_s", "allreduce_wait_s"))
            step = bytes_per_outer_step(peers)
            print(f"   eval loss {s['final']['eval_loss']:.3f}, acc {s['final']['eval_acc']:.3f}, "
                  f"{sum(p['bytes_sent'] for p in peers) / len(peers) / 2**20:.2f} MiB sent per peer ({step:,.0f} bytes "
                  f"per outer step), all-reduce {ar:.2f} s of which waited {ar_wait:.2f} s, identical parameters: "
                  f"{s['identical']}", flush=True)
        s = reps[0]  # the curve and the timings of the first repetition
        peers = list(s["per_peer"].values())
        ar, ar_wait = (sum(p[k] for p in peers) / len(peers) for k in ("allreduce_s", "allreduce_wait_s"))
        finals = [{"eval_loss": r["final"]["eval_loss"], "eval_acc": r["final"]["eval_acc"],
                   "params_hash": r["params_hash"]} for r in reps]
        run = {
            "config": s["config"], "wall_s": s["wall_s"], "identical": s["identical"],
            # the mean over the repetitions: the ring's order of the peers changes the order of the additions
            "final_eval_loss": sum(f["eval_loss"] for f in finals) / len(finals),
            "final_eval_acc": sum(f["eval_acc"] for f in finals) / len(finals),
            "repeats": finals,
            "MiB_sent_per_peer": sum(p["bytes_sent"] for p in peers) / len(peers) / 2**20,
            "bytes_per_outer_step": bytes_per_outer_step(peers),
            "compute_s_per_peer": sum(p["compute_s"] for p in peers) / len(peers),
            "allreduce_s_per_peer": ar, "allreduce_wait_s_per_peer": ar_wait,
            "hidden_fraction": max(0.0, 1 - ar_wait / ar) if ar > 0 else None,  # of the all-reduce time
            "curve": s["curve"],
        }
        summary["runs"][name] = run
    summary["outer_quant"] = outer_quant_table(summary["runs"])
    print_outer_quant_table(summary["outer_quant"])
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if plot(summary, out):
        print(f"wrote {out / 'summary.json'} and {out / 'loss_curves.png'}")
    return 0


def plot(summary: dict, out: Path) -> bool:
    """results/loss_curves.png from a summary (False without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"1 worker": "-", "4 peers, sync DiLoCo": "-", "4 peers, async DiLoCo": "-."}
    for name, run in summary["runs"].items():
        style = styles.get(name, "--" if run["config"]["outer_quant"] == "8" else ":")
        color = f"C{list(RUNS).index(name)}"  # the same colour for a run in both panels
        rounds = [p["round"] for p in run["curve"]]
        loss = [p["eval_loss"] for p in run["curve"]]
        mib = [p["bytes_sent"] / 2**20 for p in run["curve"]]
        label = f"{name} ({run['MiB_sent_per_peer']:.1f} MiB sent per peer)"
        ax1.plot(rounds, loss, style, color=color, label=label)
        if run["MiB_sent_per_peer"] > 0:  # one worker sends nothing
            ax2.plot(mib, loss, style, color=color, label=name)
    ax1.set_xlabel(f"outer round ({summary['inner_steps']} inner AdamW steps each)")
    ax1.set_ylabel("eval loss")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("MiB sent by one peer")
    ax2.set_ylabel("eval loss")
    ax2.set_yscale("log")
    ax2.set_xscale("log")
    ax2.legend(fontsize=8)
    fig.suptitle("DiLoCo over pccl_arrays (JAX MLP, generated 10-class task)")
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=110)
    return True


if __name__ == "__main__":
    sys.exit(main())
