"""The data of benchmarks/quant.py's error-against-peers study (section "scaling"): every peer's float32
contribution, a different one on every peer, for three data sets: normal, heavy-tailed (Student-t, 3 degrees of
freedom) and real pseudo-gradients of the DiLoCo example (one training round's delta per peer)."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_REAL = HERE / "data" / "diloco_deltas.npz"

SCALING_DATASETS = {
    "normal": "N(0, 1) float32, a different seed per peer",
    "student-t": "Student-t with 3 degrees of freedom (variance 3, heavy tails) as float32, a different seed per peer",
    "real": "pseudo-gradients of the DiLoCo example (benchmarks/data/diloco_deltas.npz, one float32 array per "
            "round): peer i contributes round i's delta (flattened; the rounds in the file's natural key order)",
}


def synthetic(dataset: str, n: int, rank: int, seed: int):
    """The contribution of peer `rank` to a synthetic data set, the same in every process for the same arguments."""
    import numpy as np
    rng = np.random.default_rng([seed, rank, 1000 + list(SCALING_DATASETS).index(dataset)])
    if dataset == "normal":
        return rng.standard_normal(n, dtype=np.float32)
    if dataset == "student-t":
        return rng.standard_t(3, size=n).astype(np.float32)
    raise ValueError(f"not a synthetic data set: {dataset!r}")


def _natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def load_real(path: Path, n_max: int, peers_max: int):
    """The real data set: (contributions, info) with one float32 array of the same length per peer (round), at
    most `peers_max` of them and `n_max` elements each (the first elements of every flattened round), or
    (None, info) with info["skipped"] saying why. info describes the file."""
    import numpy as np
    path = Path(path)
    info = {"path": str(path)}
    if not path.exists():
        info["skipped"] = (f"{path} does not exist (it holds the DiLoCo example's pseudo-gradients, one float32 "
                           "array per round; pass another file with --real PATH)")
        return None, info
    floats = []  # (key, first n_max elements flattened) of the first peers_max non-empty float arrays
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = sorted(z.files, key=_natural)
            sizes, dtypes = set(), set()
            for k in keys:
                if len(floats) == peers_max:
                    break
                a = z[k]
                if a.dtype.kind == "f" and a.size > 0:
                    sizes.add(int(a.size))
                    dtypes.add(str(a.dtype))
                    floats.append((k, a.reshape(-1)[:n_max].copy()))
                del a
    except Exception as e:  # not an npz, unreadable, pickled objects
        info["skipped"] = f"{path} cannot be read as an .npz of arrays ({type(e).__name__}: {e})"
        return None, info
    info.update({"rounds_in_file": len(keys), "keys": [k for k, _ in floats], "dtypes": sorted(dtypes),
                 "elements_per_round": sorted(sizes)})
    if len(floats) < 2:
        info["skipped"] = (f"{path} holds {len(floats)} non-empty float arrays; the study needs one per peer, "
                           "at least 2")
        return None, info
    n = min(a.size for _, a in floats)
    xs = [np.ascontiguousarray(a.reshape(-1)[:n], dtype=np.float32) for _, a in floats]
    bad = [k for (k, _), x in zip(floats, xs) if not np.all(np.isfinite(x))]
    if bad:
        info["skipped"] = f"rounds {bad} of {path} hold NaN or Inf"
        return None, info
    info.update({"peers": len(xs), "elements": n, "rms_per_round": [float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
                                                                     for x in xs]})
    if len(xs) < peers_max:
        info["note"] = f"only {len(xs)} rounds in the file: the real data set runs N = 2..{len(xs)}"
    return xs, info
