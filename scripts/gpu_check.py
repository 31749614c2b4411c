"""The GPU check (scripts/gpu_check.sh runs it): every CUDA path of pccl_arrays on a machine with a CUDA device,
in one run of a few minutes, ending in one table.

What it runs, in order (``--dry-run`` lists it and checks that everything it needs is importable or present,
without a GPU):

1. arrays: two peers (two communicators of this process, one thread each, a local master) all-reduce torch CUDA
   tensors (a new result, ``out=``, in place), CuPy arrays and JAX GPU arrays; each result must be exact and on
   the input's device.
2. trees: ``all_reduce_tree`` of a dict mixing torch CUDA, CuPy, JAX GPU and NumPy leaves.
3. shared state: ``sync_shared_state`` of a state holding a torch CUDA tensor; the receiver gets the holder's bits.
4. quantized: the device path (Triton) on torch CUDA tensors, both peers bit-identical, within the format's bound.
5. parity: Triton quantize / dequantize on the GPU against the C++ host kernels, bit for bit, 1 M to 256 M elements
   (minmax4 and rotation too, up to 16 M elements, where the built core has them).
6. reference: Triton quantize / dequantize on the GPU against the NumPy reference (tests/helpers/quant_reference.py),
   bit for bit: minmax, zeropoint and minmax4, with and without rotation, each input dtype, 0.5 M + 1001 elements.
7. speed: Triton quantize and dequantize GB/s against the device's own copy bandwidth (goal >= 70 %; minmax4 and
   rotated kernels measured too, without a goal).
8. gpu_quant_wan: ``benchmarks/gpu_quant_wan.py --quick`` (its stages, printed by it).

A framework that is not installed is reported as absent (not a failure). Everything else that goes wrong with a
CUDA device present is a FAIL, and the exit status is 1: this script never skips a broken path. Without a CUDA
device it fails at once (exit 2), unless ``--dry-run``.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
PARITY_SIZES = [1 << 20, 16 << 20, 256 << 20]  # elements
PARITY_NEW_MAX = 16 << 20  # minmax4 and rotation against C++ up to this size (the largest takes long on the host)
SPEED_GOAL = 0.70
ROTATE_SEED = 0x9E3779B8  # seed ^ 0x9E3779B9 == 1: the kernels' key argument must not specialize into a constexpr


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Pair:
    """A local master and two connected communicators; run(fn) calls fn(comm, rank) on both at once."""

    def __init__(self):
        import pccl_arrays as pa
        self.master = pa.Master("127.0.0.1:0").start()
        self.comms = [pa.Communicator(self.master.address, listen="127.0.0.1:0") for _ in range(2)]
        self.run(lambda c, r: c.connect(timeout=30))
        while any(c.world_size < 2 for c in self.comms):
            self.run(lambda c, r: c.update_topology(timeout=30))

    def run(self, fn):
        out, errs = [None, None], []

        def go(r):
            try:
                out[r] = fn(self.comms[r], r)
            except BaseException as e:  # reported by the caller
                errs.append(e)
        ts = [threading.Thread(target=go, args=(r,)) for r in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        if errs:
            raise errs[0]
        return out

    def close(self):
        for c in self.comms:
            c.close()
        self.master.stop()


# -- the checks: each returns a list of (what, ok or None for absent, detail) -------------------------------------
def check_arrays(pair) -> list:
    import numpy as np
    rows = []
    if have("torch"):
        import torch

        def torch_forms(c, r):
            x = torch.arange(1 << 20, dtype=torch.float32, device="cuda") * (r + 1)
            y = c.all_reduce(x)
            out = torch.empty_like(x)
            c.all_reduce(x, out=out)
            z = x.clone()
            c.all_reduce(z, out=z)
            want = torch.arange(1 << 20, dtype=torch.float32, device="cuda") * 3
            return all(bool(torch.equal(t, want)) and t.device == x.device for t in (y, out, z))
        ok = all(pair.run(torch_forms))
        rows.append(("torch CUDA tensors: new, out=, in place", ok, "exact, on the input's device"))
    else:
        rows.append(("torch CUDA tensors", None, "torch not installed"))
    if have("cupy"):
        import cupy

        def cupy_forms(c, r):
            x = cupy.arange(1 << 20, dtype=cupy.float32) * (r + 1)
            y = c.all_reduce(x)
            return bool(cupy.array_equal(y, cupy.arange(1 << 20, dtype=cupy.float32) * 3)) and \
                y.device.id == x.device.id
        rows.append(("CuPy arrays", all(pair.run(cupy_forms)), "exact, same device"))
    else:
        rows.append(("CuPy arrays", None, "cupy not installed"))
    if have("jax"):
        import jax
        import jax.numpy as jnp
        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if not gpus:
            rows.append(("JAX GPU arrays", False, "jax sees no GPU (jax[cuda] not installed?)"))
        else:
            def jax_forms(c, r):
                x = jax.device_put(jnp.arange(1 << 20, dtype=jnp.float32) * (r + 1), gpus[0])
                y = c.all_reduce(x)
                return bool(np.array_equal(np.asarray(y), np.arange(1 << 20, dtype=np.float32) * 3)) and \
                    gpus[0] in y.devices()
            rows.append(("JAX GPU arrays", all(pair.run(jax_forms)), "exact, same device"))
    else:
        rows.append(("JAX GPU arrays", None, "jax not installed"))
    return rows


def check_trees(pair) -> list:
    import numpy as np
    import torch

    def tree_of(r):
        t = {"w": torch.full((1000,), float(r + 1), device="cuda"), "b": np.full(7, r + 1, np.float64)}
        if have("cupy"):
            import cupy
            t["c"] = cupy.full(5, r + 1, dtype=cupy.float32)
        return t

    def run(c, r):
        got = c.all_reduce_tree(tree_of(r))
        ok = bool(torch.all(got["w"] == 3)) and got["w"].is_cuda and bool(np.all(got["b"] == 3))
        if "c" in got:
            ok = ok and bool((got["c"] == 3).all())
        return ok
    return [("all_reduce_tree of CUDA and host leaves", all(pair.run(run)), "exact, each leaf on its device")]


def check_shared_state(pair) -> list:
    import torch
    import pccl_arrays as pa

    def run(c, r):
        w = torch.full((4096,), 7.0 if r == 0 else 0.0, device="cuda")
        state = pa.SharedState({"w": w}, revision=1 if r == 0 else 0)
        c.sync_shared_state(state, strategy="send_only" if r == 0 else "receive_only")
        return bool(torch.all(w == 7.0)) and w.is_cuda
    return [("sync_shared_state of a CUDA tensor", all(pair.run(run)), "receiver holds the holder's bits")]


def check_quantized(pair) -> list:
    import torch
    import pccl_arrays as pa
    q = pa.Quantization(kind="minmax", block=1024, path="triton")

    def run(c, r):
        g = torch.Generator(device="cuda").manual_seed(r)
        x = torch.randn(1 << 22, device="cuda", generator=g)
        y = c.all_reduce(x, quantization=q)
        return y.cpu().numpy().tobytes(), y.is_cuda
    (a, d0), (b, d1) = pair.run(run)
    return [("quantized all-reduce, Triton on the GPU", a == b and d0 and d1, "both peers bit-identical")]


def check_parity(sizes) -> list:
    import numpy as np
    import torch
    from pccl_arrays import _core, _core_testing, kernels as k
    from pccl_arrays.kernels.format import quantized_bytes
    rows = []
    f32 = _core.CODES["dtype"]["float32"]
    codes = _core.CODES["quant_kind"]
    rotating = "rotate" in (_core_testing.quantize.__doc__ or "")  # a core built before rotation lacks it
    for n in sizes:
        x = torch.randn(n, device="cuda") * 3
        x[:: 997] *= 100
        configs = [("minmax", 1024, None), ("zeropoint", 1024, None)]
        if n <= PARITY_NEW_MAX:
            configs += [("minmax4", 512, None)] if "minmax4" in codes else []
            configs += [(name, 512, ROTATE_SEED) for name in ("minmax", "minmax4") if name in codes] if rotating else []
        for kind_name, block, seed in configs:
            kind = codes[kind_name]
            rot = {} if seed is None else {"rotate": True, "seed": seed}
            qd = k.quantize(x, kind, block, rotate_seed=seed).cpu().numpy()
            xh = x.cpu().numpy()
            qh = np.empty(quantized_bytes(n, block, kind), np.uint8)
            _core_testing.quantize(xh.ctypes.data, f32, n, kind, block, qh.ctypes.data, **rot)
            yd = k.dequantize(torch.from_numpy(qh).cuda(), n, kind, block, torch.float32,
                              rotate_seed=seed).cpu().numpy()
            yh = np.empty(n, np.float32)
            _core_testing.dequantize(qh.ctypes.data, n, kind, block, f32, yh.ctypes.data, 1, **rot)
            ok = qd.tobytes() == qh.tobytes() and yd.tobytes() == yh.tobytes()
            what = f"{kind_name}{', rotated' if seed is not None else ''}"
            rows.append((f"Triton = C++ bytes, {what}, {n // (1 << 20)} M elements", ok,
                         "quantize and dequantize bit for bit"))
        if n <= PARITY_NEW_MAX and not ("minmax4" in codes and rotating):
            rows.append((f"Triton = C++ bytes, minmax4 / rotated, {n // (1 << 20)} M elements", None,
                         "this build of the core has no minmax4 or no rotation"))
        del x
    return rows


def _reference():
    """tests/helpers/quant_reference.py, the NumPy reference of the format (needs ml_dtypes)."""
    sys.path.insert(0, str(ROOT / "tests" / "helpers"))
    import quant_reference
    return quant_reference


def check_reference() -> list:
    """Triton on the GPU against the NumPy reference: every kind, with and without rotation, each input dtype;
    the quantized bytes, and the decoded bits of the reference's bytes (an `avg` of 3)."""
    import ml_dtypes
    import numpy as np
    import torch
    from pccl_arrays import kernels as k
    ref = _reference()
    n = (1 << 19) + 1001  # the last block is partial and of odd length for every block size below
    g = torch.Generator(device="cuda").manual_seed(7)
    x32 = torch.randn(n, device="cuda", generator=g) * 3
    x32[:: 997] *= 100  # outliers: what rotation is for
    x32[100] = float("nan")  # poisons its block
    x32[3000] = float("inf")
    x32[10000:10002] = 3e38  # finite, but their sum overflows in the first butterfly: poisons when rotating
    x32[20480:24576] = torch.randn(4096, device="cuda", generator=g) * 1e-41  # subnormals
    x32[30000:31000] = -0.0
    numpy_dtype = {torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16, torch.float32: np.float32,
                   torch.float64: np.float64}
    bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}

    def host(t):
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).cpu().numpy().view(ml_dtypes.bfloat16)
        return t.cpu().numpy()

    configs = [(ref.MINMAX, 1024, None), (ref.ZEROPOINT, 1024, None), (ref.MINMAX4, 512, None),
               (ref.MINMAX, 512, ROTATE_SEED), (ref.ZEROPOINT, 256, 12345), (ref.MINMAX4, 512, 2**32 - 1),
               (ref.MINMAX4, 4096, 0)]
    rows = []
    for kind, block, seed in configs:
        bad = []
        for dtype, np_dtype in numpy_dtype.items():
            x = x32.to(dtype)
            xh = host(x)
            qr = ref.quantize(xh, kind, block, rotate_seed=seed)
            if k.quantize(x, kind, block, rotate_seed=seed).cpu().numpy().tobytes() != qr.tobytes():
                bad.append(f"quantize {dtype}")
            with np.errstate(all="ignore"):
                yr = ref.dequantize(qr, n, kind, block, np_dtype, divide_by=3, rotate_seed=seed)
            yd = host(k.dequantize(torch.from_numpy(qr).cuda(), n, kind, block, dtype, 3, rotate_seed=seed))
            if not np.array_equal(yd.view(bits[yd.itemsize]), yr.view(bits[yr.itemsize])):
                bad.append(f"dequantize {dtype}")
        name = {ref.MINMAX: "minmax", ref.ZEROPOINT: "zeropoint", ref.MINMAX4: "minmax4"}[kind]
        what = f"{name}, block {block}" + ("" if seed is None else f", rotated (seed {seed:#x})")
        rows.append((f"Triton = reference, {what}", not bad,
                     "bytes and bits, 4 dtypes" if not bad else "differs: " + ", ".join(bad)))
    return rows


def check_speed() -> list:
    import torch
    from pccl_arrays import _core, _core_testing, kernels as k
    n = 64 << 20
    x = torch.randn(n, device="cuda")

    def gbps(fn, nbytes):
        fn()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return nbytes / best / 1e9
    copy = gbps(lambda: x.clone(), 4 * n)
    kind = _core.CODES["quant_kind"]["minmax"]
    q = k.quantize(x, kind, 1024)
    rows = [("device copy (x.clone()), 256 MiB", True, f"{copy:.0f} GB/s of float32")]
    for name, fn in (("quantize", lambda: k.quantize(x, kind, 1024)),
                     ("dequantize", lambda: k.dequantize(q, n, kind, 1024, torch.float32))):
        g = gbps(fn, 4 * n)
        rows.append((f"Triton {name}, 256 MiB float32", g >= SPEED_GOAL * copy,
                     f"{g:.0f} GB/s = {g / copy:.0%} of copy (goal >= {SPEED_GOAL:.0%})"))
    # The new kind and the rotation: measured, no goal yet (a row fails only if the kernel fails).
    for kind, block, seed in ((3, 512, None), (1, 1024, ROTATE_SEED), (3, 512, ROTATE_SEED), (3, 4096, ROTATE_SEED)):
        q = k.quantize(x, kind, block, rotate_seed=seed)
        what = f"{'minmax4' if kind == 3 else 'minmax'}, block {block}{', rotated' if seed is not None else ''}"
        for name, fn in (("quantize", lambda: k.quantize(x, kind, block, rotate_seed=seed)),
                         ("dequantize", lambda: k.dequantize(q, n, kind, block, torch.float32, rotate_seed=seed))):
            g = gbps(fn, 4 * n)
            rows.append((f"Triton {name}, {what}", True, f"{g:.0f} GB/s = {g / copy:.0%} of copy (no goal)"))
    return rows


def check_gpu_quant_wan() -> list:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_quant_wan.py"), "--quick", "--out", "/tmp/gpu_quant_wan.json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    print(p.stdout[-4000:], p.stderr[-2000:], sep="\n")
    return [("benchmarks/gpu_quant_wan.py --quick", p.returncode == 0, f"exit {p.returncode}; stages above")]


CHECKS = [
    ("arrays", "torch CUDA, CuPy and JAX GPU arrays through all_reduce (new, out=, in place)", "pair", check_arrays),
    ("trees", "all_reduce_tree with CUDA leaves", "pair", check_trees),
    ("shared_state", "sync_shared_state of a CUDA tensor", "pair", check_shared_state),
    ("quantized", "the Triton device path between two peers", "pair", check_quantized),
    ("parity", "Triton vs C++ bytes, 1 M .. 256 M elements", None, lambda: check_parity(PARITY_SIZES)),
    ("reference", "Triton vs the NumPy reference: 3 kinds, rotation, 4 dtypes", None, check_reference),
    ("speed", f"Triton GB/s vs device copy (goal >= {SPEED_GOAL:.0%})", None, check_speed),
    ("gpu_quant_wan", "benchmarks/gpu_quant_wan.py --quick", None, check_gpu_quant_wan),
]


def print_table(rows) -> None:
    w = max(len(r[1]) for r in rows)
    print(f"\n{'check':<14} {'what':<{w}}  {'result':<6}  detail")
    for check, what, ok, detail in rows:
        status = "absent" if ok is None else ("ok" if ok else "FAIL")
        print(f"{check:<14} {what:<{w}}  {status:<6}  {detail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="list the checks and what they need; no GPU needed")
    ap.add_argument("--only", nargs="+", choices=[c[0] for c in CHECKS], help="run these checks only")
    a = ap.parse_args(argv)
    checks = [c for c in CHECKS if not a.only or c[0] in a.only]
    if a.dry_run:
        importlib.import_module("pccl_arrays")  # the extension must import
        print("scripts/gpu_check.sh would run, on a machine with a CUDA device:")
        for name, what, _, _ in checks:
            print(f"  {name:<14} {what}")
        needs = {m: have(m) for m in ("torch", "triton", "cupy", "jax")}
        print("installed here: " + ", ".join(f"{m}: {'yes' if v else 'no'}" for m, v in needs.items()))
        bench = ROOT / "benchmarks" / "gpu_quant_wan.py"
        print(f"benchmarks/gpu_quant_wan.py present: {bench.exists()}")
        try:
            _reference()
            reference = True
        except ImportError as e:
            print(f"tests/helpers/quant_reference.py does not import: {e}")
            reference = False
        print(f"tests/helpers/quant_reference.py importable: {reference}")
        return 0 if bench.exists() and reference else 1
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        print("FAIL: no CUDA device visible to torch: the GPU check needs one (use --dry-run to list the checks)")
        return 2
    rows, pair = [], None
    t0 = time.monotonic()
    try:
        for name, what, needs, fn in checks:
            t = time.monotonic()
            try:
                if needs == "pair" and pair is None:
                    pair = Pair()
                got = fn(pair) if needs == "pair" else fn()
                rows += [(name, *r) for r in got]
            except Exception as e:  # a broken path: a FAIL row, never a skip
                rows.append((name, what, False, f"{type(e).__name__}: {e}"[:200]))
            print(f"[{name}: {time.monotonic() - t:.1f} s]", flush=True)
    finally:
        if pair is not None:
            pair.close()
    print_table(rows)
    print(f"\n{torch.cuda.get_device_name(0)}; {time.monotonic() - t0:.0f} s")
    return 1 if any(r[2] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
