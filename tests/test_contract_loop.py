"""The README's loop, copied verbatim from README.md, survives what users meet: peers joining at random
moments, one leaving gracefully and one killed, with exact results and one state per revision everywhere."""

from __future__ import annotations

import json
import random
import signal
import time

import pytest

from procs import spawn, wait_all

STEPS = 160
COMPUTE_S = 0.03  # the loop runs ~6 s: every newcomer arrives while the others still train


def _records(tmp_path, rank):
    path = tmp_path / f"rank{rank}.steps"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.timeout(180)
def test_the_readme_loop_survives_joins_a_leave_and_a_kill(master, tmp_path):
    rng = random.Random(11)  # the schedule is seeded: the same moments on every run
    peers = [spawn(master.address, "readme_loop", r, 1, tmp_path, steps=STEPS, compute_s=COMPUTE_S) for r in range(2)]
    for p in peers:
        p.wait_event("started", 60)
    leaver = spawn(master.address, "readme_loop", 2, 1, tmp_path, steps=STEPS, leave_after=STEPS // 3,
                   compute_s=COMPUTE_S)
    peers.append(leaver)
    victim = None
    for rank in (3, 4, 5):
        time.sleep(rng.uniform(0.2, 0.9))  # a random moment of the others' loop, not a wait for a condition
        peers.append(spawn(master.address, "readme_loop", rank, 1, tmp_path, steps=STEPS,
                           compute_s=COMPUTE_S))
        if rank == 4:
            victim = peers[1]
            time.sleep(rng.uniform(0.1, 0.5))
            victim.kill()  # SIGKILL at a random moment: mid-operation, mid-sync or mid-compute
    wait_all([p for p in peers if p is not victim], 150)
    assert victim.proc.returncode == -signal.SIGKILL
    for p in peers:
        if p is victim:
            continue
        res = p.result()
        assert p.proc.returncode == 0 and res.get("done"), (p.rank, res, p.stderr()[-3000:])

    # Every all-reduce result is the exact average of the peers that took part (gradient of rank r = 2**r,
    # so average * world is a bit mask of the participants), the same bits on every peer for a revision.
    by_revision: dict = {}
    hashes: dict = {}
    ranks_seen = set()
    for p in peers:
        for rec in _records(tmp_path, p.rank):
            if "sync" in rec:
                hashes.setdefault(rec["sync"], set()).add(rec["hash"])
                continue
            mask = round(rec["mask"])  # average * world: exact up to float32 rounding of the average
            assert abs(rec["mask"] - mask) < 1e-3 and rec["uniform"], rec
            assert bin(mask).count("1") == rec["world"], rec
            assert mask >> p.rank & 1, (p.rank, rec)  # this peer's own contribution is in the sum
            by_revision.setdefault(rec["reduce"], set()).add(mask)
            ranks_seen |= {r for r in range(8) if mask >> r & 1}
    assert all(len(masks) == 1 for masks in by_revision.values()), by_revision
    assert all(len(h) == 1 for h in hashes.values()), "two states for one revision"
    assert set(by_revision) == set(range(STEPS)), sorted(set(range(STEPS)) - set(by_revision))
    assert {3, 4, 5} <= ranks_seen, "every newcomer took part in all-reduces"
    # The survivors all reached the last revision.
    for p in peers:
        if p is not victim and p is not leaver:
            assert any(r.get("sync") == STEPS - 1 for r in _records(tmp_path, p.rank)), p.rank
