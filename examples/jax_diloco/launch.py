"""Start a master and DiLoCo peers on this machine, optionally kill one mid-all-reduce and add one later.

A joining peer is started with the others (importing JAX and compiling take seconds) and connects when the
launcher tells it to, right after round --join.

    python launch.py --peers 4 --mode sync --rounds 40
    python launch.py --peers 3 --mode async --kill 1@5 --join 8 --rounds 20
    python launch.py --peers 4 --outer-quant 4+rotate+ef

Each peer is its own process (diloco.py), as it would be on its own machine. The launcher prints one line per
round (from the lowest-ranked live peer), then checks that every surviving peer ended with bitwise-identical
outer parameters and prints a JSON summary (also written to OUT/summary.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pccl_arrays as pa
from pccl_arrays.testing import kill_and_reap, read_progress, read_result, spawn_child

HERE = Path(__file__).resolve().parent


def _progress(out: Path, rank: int) -> list[dict]:
    return read_progress(out / f"peer{rank}.progress")


def run(peers: int = 4, mode: str = "sync", rounds: int = 40, inner_steps: int = 25, outer_quant: str = "none",
        kill: str | None = None, join: int | None = None, out: str | None = None, timeout: float = 600.0,
        quiet: bool = False, extra: list[str] | None = None) -> dict:
    """Runs one DiLoCo job; returns its summary (see the module docstring). ``outer_quant``: none, 8, 4,
    4+rotate or 4+rotate+ef (diloco.py --outer-quant); the older ``--quantization`` may come in ``extra``."""
    out_dir = Path(out or tempfile.mkdtemp(prefix="diloco-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in out_dir.glob("peer*"):
        f.unlink()
    kill_rank, kill_round = (int(v) for v in kill.split("@")) if kill else (None, None)
    legacy = any(e.split("=")[0] == "--quantization" for e in extra or [])  # the older spelling: passed through
    common = ["--mode", mode, "--rounds", str(rounds), "--inner-steps", str(inner_steps),
              *([] if legacy else ["--outer-quant", outer_quant]),
              "--out", str(out_dir), "--min-peers", "1" if peers == 1 else "2", *(extra or [])]
    t0 = time.time()
    with pa.Master("127.0.0.1:0", peer_timeout=3.0) as master:
        procs: dict[int, subprocess.Popen] = {}

        def spawn(rank: int, initial: int, wait_for: Path | None = None) -> None:
            args = [sys.executable, str(HERE / "diloco.py"), "--master", master.address, "--rank", str(rank),
                    "--initial", str(initial), *common]
            if wait_for is not None:
                args += ["--wait-for", str(wait_for)]
            if rank == kill_rank:
                args += ["--die-in-round", str(kill_round)]
            log = open(out_dir / f"peer{rank}.log", "wb")
            procs[rank] = spawn_child(args, stdout=log, stderr=subprocess.STDOUT)  # dies with the launcher

        for r in range(peers):
            spawn(r, peers)
        go = out_dir / "join.go"
        if join is not None:  # started now so that it has imported JAX and compiled when its round comes
            go.unlink(missing_ok=True)
            spawn(peers, 0, wait_for=go)
        shown, joined = 0, join is None
        deadline = time.time() + timeout
        while any(p.poll() is None for p in procs.values()):
            if time.time() > deadline:
                kill_and_reap(procs.values())
                raise RuntimeError(f"DiLoCo job still running after {timeout} s (see {out_dir})")
            live = sorted(r for r, p in procs.items() if p.poll() is None)
            rounds_seen = [p for p in _progress(out_dir, live[0]) if p["kind"] == "round"] if live else []
            for p in rounds_seen:
                if p["round"] > shown:
                    shown = p["round"]
                    if not quiet:
                        print(f"round {p['round']:3d}  peers {p['world']}  train loss {p['train_loss']:.3f}  "
                              f"eval loss {p['eval_loss']:.3f}  acc {p['eval_acc']:.3f}  "
                              f"sent {p['bytes_sent'] / 2**20:7.2f} MiB  compute {p['compute_s']:.1f} s  "
                              f"waiting on comm {p['comm_wait_s']:.2f} s", flush=True)
            if not joined and shown >= join:
                go.touch()
                joined = True
                if not quiet:
                    print(f"-- peer {peers} joins", flush=True)
            time.sleep(0.05)
    wall = time.time() - t0
    results = {}
    for r in procs:
        results[r] = read_result(out_dir / f"peer{r}.json") or {"rank": r, "killed": True}
    survivors = {r: res for r, res in results.items() if "params_hash" in res}
    errors = {r: res for r, res in results.items() if "error" in res}
    curves = {r: [p for p in _progress(out_dir, r) if p["kind"] == "round"] for r in procs}
    reference = max(curves.values(), key=len)
    summary = {
        "config": {"peers": peers, "mode": mode, "rounds": rounds, "inner_steps": inner_steps,
                   "outer_quant": next((res["outer_quant"] for res in survivors.values()), outer_quant),
                   "kill": kill, "join": join},
        "wall_s": wall,
        "survivors": sorted(survivors),
        "killed": sorted(r for r, res in results.items() if res.get("killed")),
        "errors": errors,
        "identical": len({res["params_hash"] for res in survivors.values()}) == 1,
        "params_hash": next(iter(survivors.values()))["params_hash"] if survivors else None,
        "joiner_state_bytes": results.get(peers, {}).get("state_bytes_received") if join is not None else None,
        "final": reference[-1] if reference else None,
        "curve": [{k: p[k] for k in ("round", "world", "train_loss", "eval_loss", "eval_acc", "bytes_sent",
                                     "compute_s", "comm_wait_s", "allreduce_s", "allreduce_wait_s", "sync_s")}
                  for p in reference],
        "per_peer": {r: {k: res.get(k) for k in ("round", "bytes_sent", "bytes_received", "state_bytes_received",
                                                 "compute_s", "comm_wait_s", "allreduce_s", "allreduce_wait_s", "sync_s",
                                                 "dropped_rounds", "retries", "newcomer", "allreduce_bytes_sent",
                                                 "allreduce_rounds", "outer_jit")} for r, res in survivors.items()},
        "out": str(out_dir),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--mode", choices=["sync", "async"], default="sync")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--inner-steps", type=int, default=25)
    ap.add_argument("--outer-quant", default="none", choices=["none", "8", "4", "4+rotate", "4+rotate+ef"],
                    help="the outer all-reduce's compression (diloco.py --help)")
    ap.add_argument("--kill", help="RANK@ROUND: that peer SIGKILLs itself mid-all-reduce in that round")
    ap.add_argument("--join", type=int, help="start one more peer once this round is done")
    ap.add_argument("--out", help="directory for logs, progress and summary.json (default: a temp dir)")
    ap.add_argument("--timeout", type=float, default=600.0)
    a, extra = ap.parse_known_args(argv)
    s = run(a.peers, a.mode, a.rounds, a.inner_steps, a.outer_quant, a.kill, a.join, a.out, a.timeout, extra=extra)
    print(json.dumps({k: s[k] for k in ("config", "wall_s", "survivors", "killed", "identical", "params_hash",
                                        "joiner_state_bytes", "final")}, indent=1))
    if s["errors"]:
        for r, e in s["errors"].items():
            print(f"peer {r} failed: {e['error']}: {e['message']}\n{e.get('traceback', '')}", file=sys.stderr)
        return 1
    print("outer parameters bitwise identical on every surviving peer" if s["identical"] else
          "OUTER PARAMETERS DIFFER", flush=True)
    return 0 if s["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
