"""Descriptors carry shape and tree structure: OrderedDicts reduce right between a peer that imported JAX and
one that did not, and peers whose arrays or trees differ are refused on every peer, in words."""

from __future__ import annotations

import pytest

from conftest import needs_jax
from procs import spawn, wait_all


@needs_jax
@pytest.mark.timeout(120)
def test_trees_agree_across_imports_and_differences_are_refused_everywhere(master, tmp_path):
    peers = [spawn(master.address, "trees", r, 2, tmp_path, jax=True) for r in range(2)]
    wait_all(peers, 100)
    results = [p.result() for p in peers]
    for res in results:
        assert "error" not in res, res
        assert res["keys"] == ["b", "a", "c"]  # the caller's OrderedDict, in its own order
        assert res["b"] == [3.0] * 3 and res["a"] == [0.0, 3.0, 6.0, 9.0] and res["z"] == [30, 30]
        assert res["y"] == [3.0]
        assert res["shape"].startswith("OperationMismatchError") and "shapes differ" in res["shape"]
        assert "(2, 4)" in res["shape"] and "(4, 2)" in res["shape"]
        for case in ("renamed", "order", "leaf_shape"):
            assert res[case].startswith("OperationMismatchError"), (case, res[case])
            assert "tree structures differ" in res[case], res[case]
        assert "'bias'" in res["renamed"] and "float32" in res["renamed"]
        assert res["after"] == 2.0
