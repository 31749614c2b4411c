"""Dynamic membership: a peer joining a running job, a graceful leave, and two peer groups side by side."""

from __future__ import annotations

import pytest

from procs import spawn, wait_all


def _check_records(records, sums_by_world):
    for step, world, value, uniform in records:
        assert uniform, (step, world, value)
        assert value == sums_by_world[world], (step, world, value)


@pytest.mark.timeout(90)
def test_a_peer_joins_mid_run_and_takes_part_in_the_next_operation(master, tmp_path):
    steps = 30
    first = [spawn(master.address, "loop_ops", r, 2, tmp_path, steps=steps, await_joiner_at=6) for r in range(2)]
    first[0].wait_event("step5", 30)
    late = spawn(master.address, "loop_ops", 2, 3, tmp_path, steps=steps, late=True)
    wait_all(first + [late], 60)
    sums = {2: 3.0, 3: 6.0}  # contributions are rank + 1
    for p in first + [late]:
        res = p.result()
        assert "error" not in res, res.get("traceback")
        _check_records(res["records"], sums)
    early = first[0].result()["records"]
    joined = late.result()["records"]
    assert early[0][1] == 2 and early[-1][1] == 3, "the world grew from 2 to 3"
    # the newcomer's first operation is the first one the others ran with 3 peers
    first_three = next(r[0] for r in early if r[1] == 3)
    assert first_three == 6, "the others held at step 6 until the newcomer was pending"
    assert joined[0][0] == first_three and joined[0][1] == 3
    assert [r[0] for r in joined] == list(range(first_three, steps))


@pytest.mark.timeout(90)
def test_graceful_leave_shrinks_the_world_without_errors(master, tmp_path):
    steps, leave_at = 12, 5
    peers = [spawn(master.address, "loop_ops", r, 3, tmp_path, steps=steps, leave_at=leave_at, leaver=2)
             for r in range(3)]
    wait_all(peers, 60)
    assert peers[2].result()["left"] and len(peers[2].result()["records"]) == leave_at
    for p in peers[:2]:
        res = p.result()
        assert "error" not in res, res.get("traceback")
        assert len(res["records"]) == steps
        _check_records(res["records"], {3: 6.0, 2: 3.0})
        assert [r[1] for r in res["records"]] == [3] * leave_at + [2] * (steps - leave_at)
    assert master.stats()["ops_aborted"] == 0


@pytest.mark.timeout(90)
def test_two_peer_groups_reduce_side_by_side(master, tmp_path):
    steps = 10
    peers = [spawn(master.address, "loop_ops", r, 4, tmp_path, steps=steps, group=r // 2, total=4)
             for r in range(4)]
    wait_all(peers, 60)
    for p in peers:
        res = p.result()
        assert "error" not in res, res.get("traceback")
        # group 0 holds ranks 0, 1 (sum 1 + 2); group 1 holds ranks 2, 3 (sum 3 + 4)
        expected = 3.0 if p.rank < 2 else 7.0
        assert [r[1:3] for r in res["records"]] == [[2, expected]] * steps
