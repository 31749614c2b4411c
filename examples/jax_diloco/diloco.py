"""One DiLoCo peer: JAX inner training, pccl_arrays for the outer all-reduce and the shared state.

    python diloco.py --master HOST:PORT --rank R [--mode sync|async] [--outer-quant 4+rotate+ef] ...

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

The outer optimizer is SGD with Nesterov momentum (lr 0.7, momentum 0.9 by default). Each peer's delta has a
weight: 1, or 0 for a peer that joined this round in async mode and has no delta yet. With --outer-quant none
or 8 the all-reduce carries the delta times the weight plus one block holding the weight, with op sum, and the
average is sum / (sum of weights): a block of equal values is exact in float32 and in uint8 minmax. The 4-bit
modes cannot carry the weight that way (a rotated constant block is not constant, and 4 bits are coarse), so
the quantized all-reduce carries the delta alone: in sync mode every weight is 1 and the op is avg (the world
size divides); in async mode the op is sum of weight * delta and a second, unquantized all-reduce of the one
float32 weight gives the divisor. Error feedback (4+rotate+ef) applies to the delta only. Every peer applies
the same committed average to the same state, so the outer parameters stay bitwise identical.

In sync mode with --outer-quant none or 8 (the default), the round's all-reduce and the outer step are one
jitted function: the all-reduce runs inside jax.jit through pccl_arrays.jax (an ordered host callback), and a
lost peer comes out of the jitted call as PeerLostError (--eager-outer: the eager calls instead).

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
import pccl_arrays.jax as pjax
from pccl_arrays import errors
from pccl_arrays.testing import ProgressLog, die_with_parent, run_target, write_result

sys.path.insert(0, str(Path(__file__).resolve().parent))
import task  # noqa: E402

BLOCK = 1024  # packed modes: the weight travels in a block of its own, so uint8 minmax represents it exactly


# -- the outer optimizer ------------------------------------------------------------------------------------------
@jax.jit
def outer_step(params, momentum, delta, lr, mu):
    """SGD with Nesterov momentum on the pseudo-gradient: m = mu m + d; theta -= lr (d + mu m)."""
    momentum = jax.tree_util.tree_map(lambda m, d: mu * m + d, momentum, delta)
    params = jax.tree_util.tree_map(lambda p, m, d: p - lr * (d + mu * m), params, momentum, delta)
    return params, momentum


def make_jitted_outer(comm, unravel, n: int, quantization):
    """Sync DiLoCo, packed --outer-quant (none, 8): pack, all-reduce, unpack and the outer step as one jitted
    function. The all-reduce runs inside it through pccl_arrays.jax; every weight is 1, so the weight block holds
    the number of peers that contributed. Returns (params, momentum, weight sum); the call raises PeerLostError
    (typed, after the call) when a peer is lost, and nothing was applied: call it again on the smaller ring."""
    padded = -(-n // BLOCK) * BLOCK

    @pjax.jit
    def outer(params, momentum, delta, lr, mu):
        packed = jnp.concatenate([delta, jnp.zeros(padded - n, jnp.float32), jnp.ones(BLOCK, jnp.float32)])
        total = pjax.all_reduce(packed, "sum", comm=comm, quantization=quantization)
        weight = total[-1]
        avg = jnp.where(weight > 0, total[:n] / weight, jnp.zeros(n, jnp.float32))
        params, momentum = outer_step(params, momentum, unravel(avg), lr, mu)
        return params, momentum, weight

    return outer


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


# -- how the pseudo-gradient travels: --outer-quant ---------------------------------------------------------------
OUTER_QUANT = ("none", "8", "4", "4+rotate", "4+rotate+ef")
LEGACY_QUANTIZATION = {"none": "none", "minmax": "8", "uint8": "8", "zeropoint": "8"}  # the older --quantization


class OuterQuant:
    """One --outer-quant mode: the quantization of each round's all-reduce and the error feedback state.

    none, 8: one all-reduce of pack(delta, weight), op sum (float32, or uint8 minmax blocks of 1024).
    4, 4+rotate, 4+rotate+ef: the delta alone in 4-bit minmax blocks of 512 (rotated with seed = the round, so
    every round draws new signs), op avg in sync mode; in async mode op sum of weight * delta plus an
    unquantized all-reduce of [weight]. +ef: pa.ErrorFeedback on the delta (local state, never sent).
    """

    def __init__(self, name: str, kind8: str = "minmax"):
        if name not in OUTER_QUANT:
            raise ValueError(f"--outer-quant must be one of {', '.join(OUTER_QUANT)}, not {name!r}")
        self.name, self.kind8 = name, kind8
        self.packed = name in ("none", "8")
        self.rotate = "rotate" in name
        self.ef = pa.ErrorFeedback() if name.endswith("+ef") else None

    def __str__(self) -> str:
        return self.name if self.kind8 == "minmax" or self.name != "8" else f"8 ({self.kind8})"

    def quantization(self, rnd: int):
        if self.name == "none":
            return None
        if self.name == "8":
            return self.kind8
        return pa.Quantization("minmax4", rotate=self.rotate, seed=rnd if self.rotate else 0)


class Contribution:
    """What this peer sends for one round: the all-reduces (buffer, op, quantization) it takes part in, in
    order, and for error feedback the compensated delta y = delta + residual it sent."""

    def __init__(self, oq: OuterQuant, delta: np.ndarray, weight: float, rnd: int, sync: bool):
        self.oq, self.n, self.weight, self.q = oq, delta.size, weight, oq.quantization(rnd)
        self.y = None
        if oq.packed:
            self.ops = [(pack(delta, weight), "sum", self.q)]
            return
        if oq.ef is not None and weight > 0:  # a weight-0 peer sends nothing of its own: no feedback either
            self.y = np.asarray(oq.ef.compensate(delta), dtype=np.float32)
        y = self.y if self.y is not None else delta
        if sync:  # every peer's weight is 1: the average over the ring's peers, one operation
            assert weight == 1.0
            self.ops = [(y, "avg", self.q)]
        else:  # the divisor comes exact, unquantized: 4 bytes per peer
            self.ops = [(y * np.float32(weight), "sum", self.q), (np.array([weight], np.float32), "sum", None)]

    def average(self, totals: list, world: int) -> tuple[np.ndarray, float]:
        """(the average delta, the sum of the weights) from the committed results of self.ops."""
        if self.oq.packed:
            return unpack(np.asarray(totals[0]), self.n)
        if len(totals) == 1:  # avg: the library divided by the world size
            return np.asarray(totals[0], dtype=np.float32), float(world)
        weight = float(np.asarray(totals[1])[0])
        return (np.asarray(totals[0]) / np.float32(weight) if weight > 0 else np.zeros(self.n, np.float32)), weight

    def applied(self, info) -> None:
        """The round's average was applied: keep what quantizing y lost, for the next round (error feedback);
        `info` (the quantized all-reduce's) says which chunks the core quantized. A failed or dropped round
        keeps the old residual, so a retry or the next round sends it again."""
        if self.y is not None:
            self.oq.ef.update(self.y, self.q, info)


def _wait_all(handles: list) -> list:
    """Every handle's (result, info); waits for all of them before raising the first error, so that no
    operation of the round is still in flight when the round is retried."""
    done, first = [], None
    for h in handles:
        try:
            done.append((h.wait(), h.info))
        except errors.PCCLError as e:
            first = first or e
    if first is not None:
        raise first
    return done


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

    oq = outer_quant_of(a)  # before connecting: a bad flag must not hold the others up
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
    record(kind="joined", world=comm.world_size, newcomer=newcomer, peer_id=comm.peer_id, ring=comm.ring())

    momentum = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = state_of(params, momentum, 0)
    flat0, unravel = ravel_pytree(params)
    n = flat0.size
    lr, mu = jnp.float32(a.outer_lr), jnp.float32(a.outer_momentum)
    totals = {"bytes_sent": 0, "bytes_received": 0, "state_bytes_received": 0, "compute_s": 0.0, "comm_wait_s": 0.0,
              "allreduce_s": 0.0, "allreduce_wait_s": 0.0, "sync_s": 0.0, "dropped_rounds": 0, "retries": 0,
              "allreduce_bytes_sent": 0, "allreduce_rounds": 0}  # the outer all-reduces' bytes, committed rounds
    saved: dict = {}  # --save-deltas: rank 0's first pseudo-gradients

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

    def average(c: Contribution, handles=None):
        """The committed average of the peers' deltas (retrying on the smaller ring); None to drop the round."""
        while True:
            t0 = time.perf_counter()
            try:
                if handles is None:
                    done = [comm.all_reduce(buf, op, quantization=q, return_info=True) for buf, op, q in c.ops]
                else:
                    done = _wait_all(handles)
            except errors.PeerLostError:
                totals["retries"] += 1
                handles = None
                continue
            finally:
                totals["comm_wait_s"] += time.perf_counter() - t0
                totals["allreduce_wait_s"] += time.perf_counter() - t0
            infos = [info for _, info in done]
            for info in infos:
                totals["allreduce_s"] += info.seconds
                totals["bytes_sent"] += info.bytes_sent
                totals["bytes_received"] += info.bytes_received
                totals["allreduce_bytes_sent"] += info.bytes_sent
            world = infos[0].world_size
            if any(info.world_size != world for info in infos):  # a peer was lost between the two operations
                totals["retries"] += 1                              # (the same on every survivor): both again
                handles = None
                continue
            totals["allreduce_rounds"] += 1
            avg, weights = c.average([total for total, _ in done], world)
            if world < a.min_peers or weights == 0:
                totals["dropped_rounds"] += 1
                return None, world
            c.applied(infos[0])
            return avg, world

    outer_jit = None
    if a.mode == "sync" and oq.packed and not a.eager_outer:
        outer_jit = make_jitted_outer(comm, unravel, n, oq.quantization(0))

    def jitted_round(theta, mom, delta: np.ndarray):
        """Sync, packed: the jitted all-reduce + outer step, retried on the smaller ring after a lost peer;
        ((params, momentum) or None to drop the round, the ring size)."""
        while True:
            t0 = time.perf_counter()
            try:
                new_theta, new_mom, weight = outer_jit(theta, mom, jnp.asarray(delta), lr, mu)
            except errors.PeerLostError:
                totals["retries"] += 1
                continue
            finally:
                totals["comm_wait_s"] += time.perf_counter() - t0
                totals["allreduce_wait_s"] += time.perf_counter() - t0
            info = pjax.last_info(comm)  # the all-reduce's, from whichever thread XLA ran it on
            totals["allreduce_s"] += info.seconds
            totals["bytes_sent"] += info.bytes_sent
            totals["bytes_received"] += info.bytes_received
            totals["allreduce_bytes_sent"] += info.bytes_sent
            totals["allreduce_rounds"] += 1
            if info.world_size < a.min_peers or float(weight) == 0:
                totals["dropped_rounds"] += 1
                return None, info.world_size
            return (new_theta, new_mom), info.world_size

    def start(delta: np.ndarray, weight: float):
        """Async: this round's contribution and the handles of its all-reduces, started in the same order on
        every peer (the automatic tags agree)."""
        c = Contribution(oq, delta, weight, rnd, sync=False)
        return [comm.all_reduce_async(buf, op, quantization=q) for buf, op, q in c.ops], c

    def save_delta(delta: np.ndarray) -> None:
        """--save-deltas: rank 0 keeps its first K pseudo-gradients (float32, flattened) as round_0, round_1, ..."""
        if not a.save_deltas or a.rank != 0 or len(saved) >= a.save_deltas_rounds:
            return
        saved[f"round_{len(saved)}"] = np.array(delta, dtype=np.float32)
        if len(saved) == a.save_deltas_rounds:
            write_deltas()

    def write_deltas() -> None:
        path = Path(a.save_deltas)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **saved)
        tmp.rename(path)

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
    pending = None  # async: (handles, contribution) of the all-reduces in flight
    if a.mode == "async" and newcomer:
        # The others start their all-reduce right after this boundary; this peer has no delta yet: weight 0.
        pending = start(np.zeros(n, np.float32), 0.0)
    while rnd < a.rounds:
        if a.die_in_round == rnd:
            _die_mid_allreduce(comm)
        delta, train_loss = inner(theta)  # async: overlaps the previous round's all-reduce
        save_delta(delta)
        if outer_jit is not None:
            stepped, world = jitted_round(theta, mom, delta)
            if stepped is not None:
                (theta, mom), rnd = stepped, rnd + 1
                finish_round(theta, mom, rnd, world, train_loss)
        elif a.mode == "sync":
            pending = (None, Contribution(oq, delta, 1.0, rnd, sync=True))
        if pending is not None:
            avg, world = average(pending[1], handles=pending[0])
            pending = None
            if avg is not None:
                theta, mom = outer_step(theta, mom, unravel(jnp.asarray(avg)), lr, mu)
                rnd += 1
                finish_round(theta, mom, rnd, world, train_loss)
        theta, mom, rnd = boundary(vote=True)
        if a.mode == "async" and rnd < a.rounds:
            pending = start(delta, 1.0)
    if saved and len(saved) < a.save_deltas_rounds:  # fewer rounds than asked for: what there is
        write_deltas()
    result = {"rank": a.rank, "newcomer": newcomer, "round": rnd, "params_hash": params_hash(theta),
              "outer_quant": str(oq), "outer_jit": outer_jit is not None, **totals}
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
    ap.add_argument("--outer-quant", choices=OUTER_QUANT,
                    help="the outer all-reduce: none (float32), 8 (uint8 minmax), 4 (4-bit minmax, block 512), "
                         "4+rotate (and a randomized Hadamard rotation), 4+rotate+ef (and error feedback); "
                         "default none")
    ap.add_argument("--quantization", choices=sorted(LEGACY_QUANTIZATION),
                    help="the older spelling: none = --outer-quant none; minmax (uint8) = --outer-quant 8; "
                         "zeropoint = 8 with uint8 zeropoint blocks")
    ap.add_argument("--eager-outer", action="store_true",
                    help="sync mode, --outer-quant none or 8: all-reduce with eager calls instead of inside the "
                         "jitted outer step (pccl_arrays.jax)")
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--data-timeout", type=float, default=10.0)
    ap.add_argument("--min-peers", type=int, default=2, help="drop a round whose all-reduce had fewer peers")
    ap.add_argument("--seed", type=int, default=0, help="initial parameters")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--wait-for", help="join only once this file exists (the launcher creates it)")
    ap.add_argument("--die-in-round", type=int, default=-1, help="fault demo: SIGKILL itself mid-all-reduce")
    ap.add_argument("--save-deltas", metavar="PATH",
                    help="rank 0 saves its first --save-deltas-rounds pseudo-gradients (flattened float32) to this "
                         ".npz, as arrays round_0, round_1, ...")
    ap.add_argument("--save-deltas-rounds", type=int, default=8, metavar="K")
    return ap


def outer_quant_of(a) -> OuterQuant:
    """--outer-quant, or the older --quantization (both given: they must agree)."""
    if a.quantization is None:
        return OuterQuant(a.outer_quant or "none")
    legacy = OuterQuant(LEGACY_QUANTIZATION[a.quantization],
                        kind8="zeropoint" if a.quantization == "zeropoint" else "minmax")
    if a.outer_quant is not None and a.outer_quant != legacy.name:
        raise ValueError(f"--quantization {a.quantization} contradicts --outer-quant {a.outer_quant}")
    return legacy


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
