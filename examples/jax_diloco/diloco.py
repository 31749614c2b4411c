"""One DiLoCo peer: JAX inner training, pccl_arrays for the outer all-reduce and the shared state.

    python diloco.py --master HOST:PORT --rank R [--mode sync|async] [--quantization minmax] ...

(launch.py starts a master and the peers for you.)

How this works. Every peer holds the *outer* parameters, the outer optimizer's momentum and the round counter
as a pccl_arrays.SharedState, so a peer that joins receives them bit-exact. A round:

  sync DiLoCo                                   async DiLoCo (one-step delayed)
  1. update_topology(); sync_shared_state()     1. H inner AdamW steps from the outer params theta_t, while
  2. H inner AdamW steps from theta_t              the all-reduce of round t-1 is still in flight
  3. delta_t = theta_t - local params           2. delta_t = theta_t - local params
  4. average delta_t over the peers             3. wait for avg(delta_{t-1}); theta_{t+1} = outer(theta_t, it)
  5. theta_{t+1} = outer(theta_t, avg)          4. update_topology(); sync_shared_state()
                                                5. start the all-reduce of delta_t (all_reduce_async)

The outer optimizer is SGD with Nesterov momentum (lr 0.7, momentum 0.9 by default). The all-reduce carries
each peer's delta times a weight (1, or 0 for a peer that joined this round in async mode and has no delta
yet) plus one block holding the weight, with op sum; the average is sum / (sum of weights). Every peer
applies the same committed average to the same state, so the outer parameters stay bitwise identical.

Failures, as users should handle them: a PeerLostError from the all-reduce retries it on the smaller ring
(every surviving member of the failed operation gets the same error, so all retry together); a failed sync
goes back to the round boundary; a round whose all-reduce ends with fewer than --min-peers peers is dropped
(the outer parameters stay, the round counter does not advance).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import pccl_arrays as pa
from pccl_arrays import errors
from pccl_arrays.testing import ProgressLog, die_with_parent, run_target, write_result

sys.path.insert(0, str(Path(__file__).resolve().parent))
import task  # noqa: E402

BLOCK = 1024  # the weight travels in a block of its own, so quantization represents it exactly


# -- the outer optimizer ------------------------------------------------------------------------------------------
@jax.jit
def outer_step(params, momentum, delta, lr, mu):
    """SGD with Nesterov momentum on the pseudo-gradient: m = mu m + d; theta -= lr (d + mu m)."""
    momentum = jax.tree_util.tree_map(lambda m, d: mu * m + d, momentum, delta)
    params = jax.tree_util.tree_map(lambda p, m, d: p - lr * (d + mu * m), params, momentum, delta)
    return params, momentum


def make_inner(lr: float, weight_decay: float):
    opt = optax.adamw(lr, weight_decay=weight_decay)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(task.loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return opt, step


# -- shared state <-> pytrees ---------------------------------------------------------------------------------------
def named_leaves(prefix: str, tree) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + "/" + "/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in leaves}


def tree_from_state(state: pa.SharedState, prefix: str, like):
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [prefix + "/" + "/".join(str(getattr(k, "key", k)) for k in path) for path, _ in paths]
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(state[n]) for n in names])


def state_of(params, momentum, round_: int) -> pa.SharedState:
    entries = {**named_leaves("params", params), **named_leaves("momentum", momentum),
               "round": np.array([round_], dtype=np.int64)}
    return pa.SharedState(entries, revision=round_)


def params_hash(params) -> str:
    flat, _ = ravel_pytree(params)
    return hashlib.sha256(np.asarray(flat).tobytes()).hexdigest()[:16]


# -- the averaged pseudo-gradient ------------------------------------------------------------------------------------
def pack(delta_flat: np.ndarray, weight: float) -> np.ndarray:
    """delta * weight, zero-padded to whole blocks, then one block holding the weight."""
    n = delta_flat.size
    padded = -(-n // BLOCK) * BLOCK
    buf = np.zeros(padded + BLOCK, dtype=np.float32)
    buf[:n] = delta_flat * np.float32(weight)
    buf[padded:] = weight
    return buf


def unpack(total: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    weight = float(total[-1])
    return (total[:n] / np.float32(weight) if weight > 0 else np.zeros(n, np.float32)), weight


def _die_mid_allreduce(comm: pa.Communicator) -> None:
    """For the fault demo: SIGKILL this process as soon as its all-reduce has moved bytes."""
    start = sum(s["bytes"] for s in comm.connection_stats())

    def run():
        while sum(s["bytes"] for s in comm.connection_stats()) == start:
            time.sleep(0.0002)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=run, daemon=True).start()


# -- the peer --------------------------------------------------------------------------------------------------------
def run_peer(a) -> dict:
    out = Path(a.out)
    progress = ProgressLog(out / f"peer{a.rank}.progress")  # the launcher follows it

    def record(**fields):
        progress.write(rank=a.rank, **fields)

    params = task.init_params(a.seed)  # a newcomer's values are replaced by the sync
    inner_opt, inner_step = make_inner(a.inner_lr, a.weight_decay)
    inner_state = inner_opt.init(params)
    data = task.batches(a.rank, a.batch_size, a.data_seed)
    eval_x, eval_y = task.eval_set()
    x0, y0 = next(task.batches(10**6, a.batch_size))  # a warm-up batch from no peer's stream
    jax.block_until_ready(inner_step(params, inner_state, x0, y0))  # compile before joining: a joiner
    jax.block_until_ready(task.evaluate(params, eval_x, eval_y))     # should not hold the others up
    while a.wait_for and not Path(a.wait_for).exists():  # the launcher says when to join
        time.sleep(0.01)

    comm = pa.Communicator(a.master, connections=a.connections, data_timeout=a.data_timeout,
                           master_timeout=10.0, heartbeat_interval=0.2)
    comm.connect(timeout=120)
    while a.initial and comm.world_size < a.initial:  # the initial peers admit each other
        if comm.are_peers_pending():
            comm.update_topology()
        else:
            time.sleep(0.005)
    newcomer = not a.initial
    record(kind="joined", world=comm.world_size, newcomer=newcomer)

    quant = a.quantization if a.quantization != "none" else None
    momentum = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = state_of(params, momentum, 0)
    flat0, unravel = ravel_pytree(params)
    n = flat0.size
    lr, mu = jnp.float32(a.outer_lr), jnp.float32(a.outer_momentum)
    totals = {"bytes_sent": 0, "bytes_received": 0, "state_bytes_received": 0, "compute_s": 0.0, "comm_wait_s": 0.0,
              "allreduce_s": 0.0, "allreduce_wait_s": 0.0, "sync_s": 0.0, "dropped_rounds": 0, "retries": 0}

    synced = False  # a newcomer's first sync is receive_only

    def boundary(vote: bool):
        """Admit newcomers and sync the shared state; returns (params, momentum, round)."""
        nonlocal synced
        while True:
            try:
                if vote:
                    comm.update_topology()
                t0 = time.perf_counter()
                info = comm.sync_shared_state(state, "receive_only" if newcomer and not synced
                                              else "enforce_popular")
                totals["comm_wait_s"] += time.perf_counter() - t0
                totals["sync_s"] += time.perf_counter() - t0
                totals["state_bytes_received"] += info.bytes_received
                totals["bytes_sent"] += info.bytes_sent
                totals["bytes_received"] += info.bytes_received
                synced = True
                return (tree_from_state(state, "params", params), tree_from_state(state, "momentum", momentum),
                        int(state["round"][0]))
            except errors.PeerLostError:
                totals["retries"] += 1
                vote = True  # after a failure every peer goes through the vote again

    def average(delta_flat: np.ndarray, weight: float, handle=None):
        """The committed average of the peers' deltas (retrying on the smaller ring); None to drop the round."""
        buf = pack(delta_flat, weight)
        while True:
            t0 = time.perf_counter()
            try:
                if handle is None:
                    total, info = comm.all_reduce(buf, "sum", quantization=quant, return_info=True)
                else:
                    total, info = handle.wait(), handle.info
            except errors.PeerLostError:
                totals["retries"] += 1
                handle = None
                continue
            finally:
                totals["comm_wait_s"] += time.perf_counter() - t0
                totals["allreduce_wait_s"] += time.perf_counter() - t0
            totals["allreduce_s"] += info.seconds
            totals["bytes_sent"] += info.bytes_sent
            totals["bytes_received"] += info.bytes_received
            avg, weights = unpack(np.asarray(total), delta_flat.size)
            if info.world_size < a.min_peers or weights == 0:
                totals["dropped_rounds"] += 1
                return None, info.world_size
            return avg, info.world_size

    def inner(theta):
        nonlocal inner_state
        t0 = time.perf_counter()
        local, losses = theta, []
        for _ in range(a.inner_steps):
            x, y = next(data)
            local, inner_state, loss = inner_step(local, inner_state, x, y)
            losses.append(loss)
        delta = np.asarray(ravel_pytree(jax.tree_util.tree_map(lambda o, p: o - p, theta, local))[0])
        totals["compute_s"] += time.perf_counter() - t0
        return delta, float(np.mean([float(v) for v in losses]))

    def finish_round(theta, mom, rnd, world, train_loss):
        state_new = state_of(theta, mom, rnd)
        for name in state.keys():  # JAX arrays are immutable: replace the entries
            state[name] = state_new[name]
        state.revision = rnd
        ev_loss, ev_acc = task.evaluate(theta, eval_x, eval_y)
        record(kind="round", round=rnd, world=world, train_loss=train_loss, eval_loss=float(ev_loss),
               eval_acc=float(ev_acc), **totals)

    theta, mom, rnd = boundary(vote=False)
    pending = None  # async: (handle, delta, weight) of the all-reduce in flight
    if a.mode == "async" and newcomer:
        # The others start their all-reduce right after this boundary; this peer has no delta yet: weight 0.
        pending = (comm.all_reduce_async(pack(np.zeros(n, np.float32), 0.0), "sum", quantization=quant),
                   np.zeros(n, np.float32), 0.0)
    while rnd < a.rounds:
        if a.die_in_round == rnd:
            _die_mid_allreduce(comm)
        delta, train_loss = inner(theta)  # async: overlaps the previous round's all-reduce
        if a.mode == "sync":
            pending = (None, delta, 1.0)
        if pending is not None:
            avg, world = average(pending[1], pending[2], handle=pending[0])
            pending = None
            if avg is not None:
                theta, mom = outer_step(theta, mom, unravel(jnp.asarray(avg)), lr, mu)
                rnd += 1
                finish_round(theta, mom, rnd, world, train_loss)
        theta, mom, rnd = boundary(vote=True)
        if a.mode == "async" and rnd < a.rounds:
            pending = (comm.all_reduce_async(pack(delta, 1.0), "sum", quantization=quant), delta, 1.0)
    result = {"rank": a.rank, "newcomer": newcomer, "round": rnd, "params_hash": params_hash(theta), **totals}
    comm.close()
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="one DiLoCo peer (see launch.py)")
    ap.add_argument("--master", required=True)
    ap.add_argument("--rank", type=int, required=True, help="names this peer's data shard and files")
    ap.add_argument("--out", required=True, help="directory for progress and result files")
    ap.add_argument("--initial", type=int, default=0, help="peers started together (0: this peer joins later)")
    ap.add_argument("--mode", choices=["sync", "async"], default="sync")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--inner-steps", type=int, default=25, help="H")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--inner-lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--outer-lr", type=float, default=0.7)
    ap.add_argument("--outer-momentum", type=float, default=0.9)
    ap.add_argument("--quantization", default="none", help="none, minmax or zeropoint (uint8 blocks)")
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--data-timeout", type=float, default=10.0)
    ap.add_argument("--min-peers", type=int, default=2, help="drop a round whose all-reduce had fewer peers")
    ap.add_argument("--seed", type=int, default=0, help="initial parameters")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--wait-for", help="join only once this file exists (the launcher creates it)")
    ap.add_argument("--die-in-round", type=int, default=-1, help="fault demo: SIGKILL itself mid-all-reduce")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if not die_with_parent():  # a launcher's child dies with it; run by hand, this does nothing
        return 1
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result, status = run_target(run_peer, a)  # a failure is reported by the launcher
    write_result(out / f"peer{a.rank}.json", dict(result, rank=a.rank))
    return status


if __name__ == "__main__":
    sys.exit(main())
