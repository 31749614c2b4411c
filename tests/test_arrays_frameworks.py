"""torch, JAX and NumPy arrays through one entry point: zero-copy host views, results in the caller's
framework, in place where the framework allows it, bf16/fp16, strided views, 0-d arrays, grad, pytrees."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import needs_cupy, needs_jax, needs_torch
from pccl_arrays import errors
from test_api import run_peers


@needs_torch
@pytest.mark.timeout(60)
def test_torch_in_place_is_zero_copy_and_new_results_are_torch(master):
    import torch

    def fn(rank, c):
        t = torch.arange(6, dtype=torch.float32).reshape(2, 3) + rank
        ptr = t.data_ptr()
        same = c.all_reduce(t, out=t)
        fresh = c.all_reduce(torch.ones(4, dtype=torch.bfloat16) * (rank + 1))
        half = c.all_reduce(torch.full((3,), 0.5, dtype=torch.float16), "avg")
        scalar = c.all_reduce(torch.tensor(rank + 1, dtype=torch.int64), "max")
        return same is t and t.data_ptr() == ptr, t, fresh, half, scalar

    for ok, t, fresh, half, scalar in run_peers(master, 2, fn):
        assert ok
        assert torch.equal(t, torch.arange(6, dtype=torch.float32).reshape(2, 3) * 2 + 1)
        assert fresh.dtype == torch.bfloat16 and torch.equal(fresh, torch.full((4,), 3.0, dtype=torch.bfloat16))
        assert half.dtype == torch.float16 and torch.equal(half, torch.full((3,), 0.5, dtype=torch.float16))
        assert scalar.shape == () and scalar.item() == 2 and scalar.dtype == torch.int64


@needs_torch
@pytest.mark.timeout(60)
def test_torch_strided_views_and_tensors_that_require_grad(master):
    import torch

    def fn(rank, c):
        base = torch.zeros(4, 6)
        view = base[:, ::2]  # non-contiguous: reduced through a compact copy, written back element by element
        view.copy_(torch.arange(12, dtype=torch.float32).reshape(4, 3) * (rank + 1))
        c.all_reduce(view, out=view)
        tr = (torch.arange(6, dtype=torch.float64).reshape(2, 3) * (rank + 1)).T
        r_tr = c.all_reduce(tr)
        w = torch.ones(3, requires_grad=True)
        g = c.all_reduce(w)  # reduces w's data; the result is outside autograd
        c.all_reduce(w, out=w)  # in place writes w's data, like DDP's gradient all-reduce
        return base, r_tr, g, w

    for base, r_tr, g, w in run_peers(master, 2, fn):
        assert torch.equal(base[:, ::2], torch.arange(12, dtype=torch.float32).reshape(4, 3) * 3)
        assert torch.all(base[:, 1::2] == 0)
        assert torch.equal(r_tr, (torch.arange(6, dtype=torch.float64).reshape(2, 3) * 3).T)
        assert not g.requires_grad and torch.equal(g, torch.full((3,), 2.0))
        assert w.requires_grad and torch.equal(w.detach(), torch.full((3,), 2.0))


@needs_jax
@pytest.mark.timeout(60)
def test_jax_always_gets_a_new_array_and_is_never_written(master):
    import jax.numpy as jnp

    def fn(rank, c):
        x = jnp.arange(5, dtype=jnp.float32) * (rank + 1)
        r = c.all_reduce(x)
        try:
            c.all_reduce(x, out=x)
            refused = None
        except errors.InvalidArgumentError as e:
            refused = str(e)
        bf = c.all_reduce(jnp.ones((2, 2), dtype=jnp.bfloat16) * (rank + 1))
        h = c.all_reduce(jnp.full((3,), 1.5, dtype=jnp.float16), "min")
        s = c.all_reduce(jnp.array(rank + 1.0, dtype=jnp.float32), "prod")
        tr = c.all_reduce((jnp.arange(6, dtype=jnp.int32).reshape(2, 3) * (rank + 1)).T)
        return x, r, refused, bf, h, s, tr, rank

    for x, r, refused, bf, h, s, tr, rank in run_peers(master, 2, fn):
        assert type(r).__module__.startswith(("jax", "jaxlib")) and r.dtype == jnp.float32
        assert bool(jnp.all(x == jnp.arange(5, dtype=jnp.float32) * (rank + 1)))  # the input was not written
        assert bool(jnp.all(r == jnp.arange(5, dtype=jnp.float32) * 3))
        assert refused and "immutable" in refused
        assert bf.dtype == jnp.bfloat16 and bool(jnp.all(bf == 3))
        assert h.dtype == jnp.float16 and bool(jnp.all(h == 1.5))
        assert s.shape == () and float(s) == 2.0
        assert bool(jnp.all(tr == (jnp.arange(6, dtype=jnp.int32).reshape(2, 3) * 3).T))


@needs_torch
@needs_jax
@pytest.mark.timeout(60)
def test_pytree_of_mixed_frameworks_and_dtypes_one_operation_per_dtype(master):
    import jax.numpy as jnp
    import ml_dtypes
    import torch

    def fn(rank, c):
        k = rank + 1
        tree = {
            "dense": {"w": torch.ones(3, 2) * k, "b": np.arange(4, dtype=np.float32) * k},
            "emb": jnp.ones((2, 2), dtype=jnp.bfloat16) * k,
            "count": np.array(k, dtype=np.int64),
            "layers": [torch.full((2,), float(k), dtype=torch.float64), np.full(3, k, dtype=ml_dtypes.bfloat16)],
        }
        # Operation ids start at the master's epoch << 16 (docs/master.md): the first one is that.
        before = c.last_info.op_id if c.last_info else (master.epoch << 16) - 1
        out = c.all_reduce_tree(tree, "sum")
        ops = c.last_info.op_id - before
        kept = torch.equal(tree["dense"]["w"], torch.ones(3, 2) * k)
        c.all_reduce_tree(tree, "sum", out=tree)
        return out, ops, kept, tree

    for out, ops, kept, tree in run_peers(master, 2, fn):
        assert ops == 4  # float32, bfloat16, int64, float64: one operation per dtype
        assert kept, "out=None must not touch the leaves"
        assert isinstance(out["dense"]["w"], torch.Tensor) and torch.equal(out["dense"]["w"], torch.full((3, 2), 3.0))
        assert isinstance(out["dense"]["b"], np.ndarray) and np.array_equal(out["dense"]["b"], np.arange(4) * 3)
        assert out["emb"].dtype == jnp.bfloat16 and bool(jnp.all(out["emb"] == 3))
        assert out["count"].shape == () and int(out["count"]) == 3
        assert out["layers"][0].dtype == torch.float64 and torch.equal(out["layers"][0], torch.full((2,), 3.0, dtype=torch.float64))
        assert out["layers"][1].dtype == ml_dtypes.bfloat16 and np.all(out["layers"][1].astype(np.float32) == 3)
        assert torch.equal(tree["dense"]["w"], torch.full((3, 2), 3.0)) and np.all(tree["dense"]["b"] == np.arange(4) * 3)


@pytest.mark.timeout(60)
def test_pytree_refuses_bad_leaves_before_any_operation(master):
    def fn(rank, c):
        bad = {"a": np.ones(3, dtype=np.float32), "b": np.ones(2, dtype=np.int32)}
        with pytest.raises(TypeError):
            c.all_reduce_tree(bad, "avg")
        ro = np.ones(3)
        ro.flags.writeable = False
        with pytest.raises(ValueError):
            ro_tree = [ro]
            c.all_reduce_tree(ro_tree, out=ro_tree)
        return c.all_reduce_tree([np.ones(2)])[0]

    for r in run_peers(master, 2, fn):
        assert np.array_equal(r, [2.0, 2.0])
    assert master.stats()["ops_rejected"] == 0


def test_unknown_objects_get_a_clear_error():
    from pccl_arrays import arrays

    with pytest.raises(errors.InvalidArgumentError, match="torch tensors, JAX arrays, CuPy arrays or NumPy"):
        arrays.framework_of(memoryview(b"abc"))


@needs_cupy
@pytest.mark.timeout(60)
def test_cupy_arrays_are_staged_and_come_back_on_their_device(master):
    import cupy

    def fn(rank, c):
        x = cupy.arange(8, dtype=cupy.float32) * (rank + 1)
        r = c.all_reduce(x)
        c.all_reduce(x, out=x)
        return r, x

    for r, x in run_peers(master, 2, fn):
        assert isinstance(r, cupy.ndarray) and r.device == x.device
        assert bool(cupy.all(r == cupy.arange(8, dtype=cupy.float32) * 3)) and bool(cupy.all(x == r))


@needs_torch
@needs_jax
@pytest.mark.timeout(180)
def test_torch_jax_and_numpy_peers_reduce_the_same_data_bit_identically(master, tmp_path):
    from procs import spawn, wait_all
    from test_allreduce import check_against_numpy

    peers = [spawn(master.address, "mixed_frameworks", r, 3, tmp_path) for r in range(3)]
    wait_all(peers, 150)
    for p, fw in zip(peers, ["torch", "jax", "numpy"]):
        res = p.result()
        assert "error" not in res, res.get("traceback")
        assert res["framework"] == fw
        assert res["result_modules"] == {"torch": ["torch"], "jax": ["jaxlib"], "numpy": ["numpy"]}[fw]
    assert check_against_numpy([p.arrays() for p in peers], 3) == 12 * 4 + 4


def _probe(framework: str, n: int) -> dict:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent / "helpers"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = subprocess.run([sys.executable, str(here / "memory_probe.py"), framework, str(n)], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(150)
@pytest.mark.parametrize("framework", [
    "numpy", pytest.param("torch", marks=needs_torch), pytest.param("jax", marks=needs_jax)])
def test_host_arrays_cross_into_the_core_without_copies(framework):
    """Peak resident memory during one all-reduce of two peers' 64 MiB arrays (both in one process):
    into a given `out` nothing extra; a new result costs the result; in place costs the one temporary
    copy that keeps the input intact until the commit (docs/arrays.md). A staging copy of the input would
    add another array's worth."""
    report = _probe(framework, 16 * 1024 * 1024)
    both = 2 * report["array_bytes"]
    if "out" in report:
        assert report["out"] < 0.05 * both, report
        assert report["inplace"] < 1.05 * both, report
    assert report["new"] < 1.05 * both, report


class _FakeCudaArray:
    """A stand-in for a CuPy array on CUDA device 0 (no GPU here): it lives behind get()/asarray() like
    device memory, so the test exercises our staging path (to host, reduce, back to the same device)."""

    __module__ = "cupy"

    def __init__(self, host: np.ndarray, device_id: int = 0):
        self._mem = host.copy()
        self.dtype, self.shape = self._mem.dtype, self._mem.shape
        self.device = type("Device", (), {"id": device_id})()
        self.staged = 0

    def __dlpack_device__(self):
        return (2, self.device.id)

    def get(self) -> np.ndarray:
        self.staged += 1
        return self._mem.copy()

    def __setitem__(self, key, value) -> None:
        self._mem[key] = value._mem

    @property
    def data(self):
        return type("Ptr", (), {"ptr": self._mem.ctypes.data})()

    @property
    def nbytes(self) -> int:
        return self._mem.nbytes


def install_fake_cupy(monkeypatch) -> None:
    """Makes ``sys.modules["cupy"]`` a module whose arrays are _FakeCudaArray (for the staging path)."""
    import contextlib
    import sys
    import types

    fake = types.ModuleType("cupy")
    fake.ndarray = _FakeCudaArray
    fake.asarray = lambda a: a if isinstance(a, _FakeCudaArray) else _FakeCudaArray(np.asarray(a))
    fake.cuda = types.SimpleNamespace(Device=lambda i: contextlib.nullcontext())
    monkeypatch.setitem(sys.modules, "cupy", fake)


@pytest.mark.timeout(60)
def test_device_arrays_are_staged_to_host_and_back_to_their_device(master, monkeypatch):
    install_fake_cupy(monkeypatch)

    def fn(rank, c):
        x = _FakeCudaArray(np.arange(6, dtype=np.float32) * (rank + 1))
        r = c.all_reduce(x)
        c.all_reduce(x, out=x)
        tree = c.all_reduce_tree({"a": _FakeCudaArray(np.ones(3, dtype=np.float64))})
        return x, r, tree

    for x, r, tree in run_peers(master, 2, fn):
        assert isinstance(r, _FakeCudaArray) and r.device.id == 0
        assert np.array_equal(r._mem, np.arange(6, dtype=np.float32) * 3)
        assert np.array_equal(x._mem, np.arange(6, dtype=np.float32) * 3) and x.staged == 2
        assert isinstance(tree["a"], _FakeCudaArray) and np.array_equal(tree["a"]._mem, [2.0, 2.0, 2.0])
