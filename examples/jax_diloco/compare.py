"""The comparison of the example's README: one worker, 4 sync-DiLoCo peers, 4 async peers, 4 peers with uint8
quantization; the same inner steps per peer. Writes results/summary.json and results/loss_curves.png.

    python compare.py [--rounds 60] [--inner-steps 25] [--out results]

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
    "4 peers, sync, uint8 (minmax)": dict(peers=4, mode="sync", quantization="minmax"),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--inner-steps", type=int, default=25)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"rounds": a.rounds, "inner_steps": a.inner_steps, "runs": {}}
    for name, cfg in RUNS.items():
        print(f"== {name}", flush=True)
        s = launch.run(rounds=a.rounds, inner_steps=a.inner_steps, out=str(out / "runs" / name.replace(" ", "_").replace(",", "")),
                       quiet=True, **cfg)
        if s["errors"] or not s["identical"]:
            print(json.dumps(s["errors"], indent=1), file=sys.stderr)
            return 1
        peers = list(s["per_peer"].values())
        ar, ar_wait = (sum(p[k] for p in peers) / len(peers) for k in ("allreduce_s", "allreduce_wait_s"))
        run = {
            "config": s["config"], "wall_s": s["wall_s"], "identical": s["identical"],
            "final_eval_loss": s["final"]["eval_loss"], "final_eval_acc": s["final"]["eval_acc"],
            "MiB_sent_per_peer": sum(p["bytes_sent"] for p in peers) / len(peers) / 2**20,
            "compute_s_per_peer": sum(p["compute_s"] for p in peers) / len(peers),
            "allreduce_s_per_peer": ar, "allreduce_wait_s_per_peer": ar_wait,
            "hidden_fraction": max(0.0, 1 - ar_wait / ar) if ar > 0 else None,  # of the all-reduce time
            "curve": s["curve"],
        }
        summary["runs"][name] = run
        print(f"   eval loss {run['final_eval_loss']:.3f}, acc {run['final_eval_acc']:.3f}, "
              f"{run['MiB_sent_per_peer']:.2f} MiB sent per peer, all-reduce {ar:.2f} s of which waited {ar_wait:.2f} s"
              f", identical parameters: {s['identical']}", flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return 0
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = ["-", "-", "-.", "--"]
    for (name, run), style in zip(summary["runs"].items(), styles):
        rounds = [p["round"] for p in run["curve"]]
        loss = [p["eval_loss"] for p in run["curve"]]
        mib = [p["bytes_sent"] / 2**20 for p in run["curve"]]
        label = f"{name} ({run['MiB_sent_per_peer']:.1f} MiB sent per peer)"
        ax1.plot(rounds, loss, style, label=label)
        if run["MiB_sent_per_peer"] > 0:  # one worker sends nothing
            ax2.plot(mib, loss, style, label=name)
    ax1.set_xlabel(f"outer round ({a.inner_steps} inner AdamW steps each)")
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
    print(f"wrote {out / 'summary.json'} and {out / 'loss_curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
