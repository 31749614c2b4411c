"""All-reduce simulations for benchmarks/quant.py: our quantized ring and direct reduce-scatter replayed with the
core's kernels (to check the real all-reduces bit for bit, to find the ring order, and to measure the error for
any number of peers), and a PCCL-style per-chunk truncating min-max ring as the error baseline."""

from __future__ import annotations

from _quant_workers import F32, HEADER


def ring_chunks(units: int, world: int) -> list[tuple[int, int]]:
    """(first unit, units) of each ring chunk, as the core splits them (cpp/peer/ring.cpp: RingPlan::region)."""
    base, rem = divmod(units, world)
    return [(c * base + min(c, rem), base + (1 if c < rem else 0)) for c in range(world)]


def simulate_ours(xs, kind: int, block: int, order=None, probe_blocks: int = 0):
    """Exact simulation of the quantized ring with the core's kernels. order[pos] is the data rank at ring
    position pos (default: the identity). Chunk c (cpp/peer/ring.cpp) starts at position c and travels c, c+1, ...,
    c+N-1 (the owner), each hop acc = Q(D(acc) + x_own) (the host path adds its exact input); every peer then
    decodes the owners' bytes.

    With probe_blocks > 0 only the first probe_blocks whole blocks of every chunk are simulated:
    returns (element indices, decoded values) of those, to identify the ring order cheaply."""
    import numpy as np
    from pccl_arrays import _core_testing
    world, n = len(xs), xs[0].size
    order = list(order or range(world))
    stride = block + HEADER
    nblocks = -(-n // block)
    chunks = ring_chunks(nblocks, world)
    if probe_blocks:
        idx, vals = [], []
        for c, (fb, nbk) in enumerate(chunks):
            k = min(probe_blocks, nbk, n // block - fb)  # whole blocks only
            if k <= 0:
                continue
            sub = [x[fb * block:(fb + k) * block] for x in xs]
            qs = []
            for x in sub:
                q = np.empty(_core_testing.quantized_bytes(x.size, block), np.uint8)
                _core_testing.quantize(np.ascontiguousarray(x).ctypes.data, F32, x.size, kind, block, q.ctypes.data)
                qs.append(q)
            acc = qs[order[c]].copy()
            for h in range(1, world):
                own = np.ascontiguousarray(sub[order[(c + h) % world]])
                _core_testing.reduce_hop_exact(acc.ctypes.data, own.ctypes.data, F32, fb, k, n, kind, block)
            out = np.empty(k * block, np.float32)
            _core_testing.dequantize(acc.ctypes.data, k * block, kind, block, F32, out.ctypes.data, 1)
            idx.append(np.arange(fb * block, (fb + k) * block))
            vals.append(out)
        return np.concatenate(idx), np.concatenate(vals)
    qs = []
    for x in xs:
        q = np.empty(_core_testing.quantized_bytes(n, block), np.uint8)
        _core_testing.quantize(x.ctypes.data, F32, n, kind, block, q.ctypes.data)
        qs.append(q)
    result = np.empty_like(qs[0])
    for c, (fb, nbk) in enumerate(chunks):
        if nbk == 0:
            continue
        lo = fb * stride
        hi = min(result.size, (fb + nbk) * stride)
        acc = qs[order[c]][lo:hi].copy()
        for h in range(1, world):
            own = np.ascontiguousarray(xs[order[(c + h) % world]][fb * block:(fb + nbk) * block])
            _core_testing.reduce_hop_exact(acc.ctypes.data, own.ctypes.data, F32, fb, nbk, n, kind, block)
        result[lo:hi] = acc
    out = np.empty(n, np.float32)
    _core_testing.dequantize(result.ctypes.data, n, kind, block, F32, out.ctypes.data, 1)
    return out


def quantize_all(x, kind: int, block: int, rotate_seed=None):
    """Q(R(x)) of a whole float32 contribution (R: the rotation, when rotate_seed is not None). A chunk's bytes are
    a slice of these: the rotation's signs depend on the global block index, and chunks hold whole blocks."""
    import numpy as np
    from pccl_arrays import _core_testing
    q = np.empty(_core_testing.quantized_bytes(x.size, block, kind), np.uint8)
    _core_testing.quantize(x.ctypes.data, F32, x.size, kind, block, q.ctypes.data, rotate_seed is not None,
                           rotate_seed or 0)
    return q


def simulate(xs, kind: int, block: int, order=None, rotate_seed=None, reduce: str = "direct", qs=None):
    """The all-reduce's result (float32, decoded and rotated back), replayed exactly with the core's kernels for
    either reduce-scatter (docs/quantization.md; tests/test_quant_ring.py::test_host_path_gives_the_reference_bytes
    holds the real all-reduce to the same computation). order[pos] is the data rank at ring position pos (default
    the identity); chunk c of whole blocks (cpp/peer/ring.cpp: RingPlan::region) belongs to position c.

    - ring: chunk c leaves position c as Q(R(x)), every later position adds its exact input,
      acc = Q(D(acc) + R(x_own)) (reduce_hop_exact), and the owner (position c - 1) quantizes the final sum;
    - direct: the owner (position c) sums R(its exact input) and the others' Q(R(x)) decoded, in ring order from
      its successor, and quantizes once (reduce_owner).

    qs: the contributions' Q(R(x)) when already computed (quantize_all), aligned with xs."""
    import numpy as np
    from pccl_arrays import _core_testing
    if reduce not in ("ring", "direct"):
        raise ValueError(f"reduce must be 'ring' or 'direct', not {reduce!r}")
    world, n = len(xs), xs[0].size
    order = list(order or range(world))
    rot, seed = rotate_seed is not None, rotate_seed or 0
    qs = qs if qs is not None else [quantize_all(x, kind, block, rotate_seed) for x in xs]
    stride = _core_testing.quantized_bytes(block, block, kind)  # bytes of one whole block
    result = np.empty(_core_testing.quantized_bytes(n, block, kind), np.uint8)
    for c, (fb, nbk) in enumerate(ring_chunks(-(-n // block), world)):
        if nbk == 0:
            continue
        lo, hi = fb * stride, min(result.size, (fb + nbk) * stride)
        e0, e1 = fb * block, min(n, (fb + nbk) * block)
        if reduce == "ring":
            acc = qs[order[c]][lo:hi].copy()
            for h in range(1, world):
                own = xs[order[(c + h) % world]][e0:e1]
                _core_testing.reduce_hop_exact(acc.ctypes.data, own.ctypes.data, F32, fb, nbk, n, kind, block, 0,
                                               seed, 0, 0, rot)
            result[lo:hi] = acc
        else:
            received = [qs[order[(c + h) % world]][lo:hi] for h in range(1, world)]
            own = xs[order[c]][e0:e1]
            _core_testing.reduce_owner(result[lo:hi].ctypes.data, [r.ctypes.data for r in received], 0,
                                       own.ctypes.data, F32, fb, nbk, n, kind, block, 0, seed, 0, rot)
    out = np.empty(n, np.float32)
    _core_testing.dequantize(result.ctypes.data, n, kind, block, F32, out.ctypes.data, 1, rot, seed)
    return out


def find_ring_order(xs, got, kind: int, block: int, first_guess) -> tuple[list[int] | None, int]:
    """The ring order (data rank per ring position) under which the simulation reproduces the first blocks of
    every chunk of the all-reduce result `got`. The master orders the ring by admission, which the benchmark
    does not control. Returns (order or None, how many of the N! orders match)."""
    import itertools
    import numpy as np
    world = len(xs)
    first = list(first_guess)
    cands = [first] + [list(p) for p in itertools.permutations(range(world)) if list(p) != first]
    matches = []
    for order in cands:
        idx, vals = simulate_ours(xs, kind, block, order, probe_blocks=4)
        if np.array_equal(vals.view(np.uint32), got[idx].view(np.uint32)):
            matches.append(order)
    return (matches[0] if matches else None), len(matches)


def _pccl_quant(v):
    """PCCL-style min-max of one chunk: (codes, lo, hi), codes truncated; float64 arithmetic as PCCL's kernel."""
    import numpy as np
    lo, hi = v.min(), v.max()
    d = float(hi) - float(lo)
    if d == 0.0:
        codes = np.zeros(v.size, np.uint8)
    else:
        rel = (v.astype(np.float64) - float(lo)) * (1.0 / d)
        codes = np.clip(np.floor(rel * 255.0), 0, 255).astype(np.uint8)
    return codes, lo, hi


def _pccl_dequant(codes, lo, hi):
    import numpy as np
    lo, hi = np.float32(lo), np.float32(hi)
    return lo + codes.astype(np.float32) * ((hi - lo) / np.float32(255))


def simulate_baseline(xs, order=None):
    """Per-chunk truncating min-max ring: one (min, max) per ring chunk of count/N elements; chunk c starts at
    rank c, each hop decodes, adds its own float32 contribution and re-quantizes; the owner quantizes the final
    sum; the all-gather moves the owner's codes verbatim; every peer decodes them."""
    import numpy as np
    world, n = len(xs), xs[0].size
    order = list(order or range(world))
    out = np.empty(n, np.float32)
    for c, (b, ln) in enumerate(ring_chunks(n, world)):
        if ln == 0:
            continue
        sl = slice(b, b + ln)
        codes, lo, hi = _pccl_quant(xs[order[c]][sl])
        for k in range(1, world):
            acc = _pccl_dequant(codes, lo, hi) + xs[order[(c + k) % world]][sl]
            codes, lo, hi = _pccl_quant(acc)
        out[sl] = _pccl_dequant(codes, lo, hi)
    return out


def error_stats(result, exact) -> dict:
    import numpy as np
    e = result.astype(np.float64) - exact
    rms_sum = float(np.sqrt(np.mean(exact * exact)))
    a = np.abs(e)
    return {"max_abs": float(np.max(a)), "p99_abs": float(np.percentile(a, 99)), "rms": float(np.sqrt(np.mean(e * e))),
            "mean": float(np.mean(e)), "rms_rel": float(np.sqrt(np.mean(e * e))) / rms_sum}
