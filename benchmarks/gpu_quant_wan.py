"""The end-to-end path of a device array through the emulated WAN, stage by stage:
quantize on the device, copy to the host, all-reduce the uint8 blocks through the relays, copy back, dequantize
on the device; and the Triton kernels' throughput against a plain torch implementation of the same math.

    PYTHONPATH=. python benchmarks/gpu_quant_wan.py --quick     # 16 MiB, continent profile, 2 peers
    PYTHONPATH=. python benchmarks/gpu_quant_wan.py --size 256MiB --profile transatlantic

Without a CUDA device it runs the host path (the C++ kernels quantize and dequantize; there is no copy to or
from a device), says so, and prints the command for a GPU machine. Triton on a CPU runs in its interpreter,
which is a correctness tool, not a speed path: its throughput is not measured there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _procs  # noqa: E402
from _common import (Run, benchmark_parser, import_pccl_arrays, join_worker, parse_size, print_footer,  # noqa: E402
                     script_main)
from wan import PIECE  # noqa: E402  (the pieces of wan.py's peers: small enough for the emulated links)

CODES = import_pccl_arrays()._core.CODES  # the core's codes for dtypes, ops and quantization kinds
F32, SUM, MINMAX = CODES["dtype"]["float32"], CODES["op"]["sum"], CODES["quant_kind"]["minmax"]
BLOCK = 1024
GPU_COMMAND = "PYTHONPATH=. python benchmarks/gpu_quant_wan.py --size 256MiB  # on a machine with a CUDA GPU"


def _cuda():
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except ImportError:
        return None


def _clock(torch, fn):
    """Wall seconds of fn(), synchronising the device around it when there is one."""
    if torch is not None:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = fn()
    if torch is not None:
        torch.cuda.synchronize()
    return r, time.perf_counter() - t0


# -- worker side ---------------------------------------------------------------------------------------------------
def worker(a) -> dict:
    import numpy as np

    from pccl_arrays import _core_testing
    torch = _cuda()
    c, relay = join_worker(a.master, a.world, a.profile, timeout=60, connections=a.k, piece_bytes=PIECE)
    n = a.size // 4
    qbytes = _core_testing.quantized_bytes(n, BLOCK)
    q_out = np.zeros(qbytes, np.uint8)
    y = np.zeros(n, np.float32)  # touched now: page faults are not part of the dequantize stage
    stages_all = []
    for rep in range(a.repeats + 1):  # the first round opens connections and compiles kernels: not reported
        stages = {}
        if torch is not None:
            from pccl_arrays.quantization import kernels

            k = kernels()
            x = torch.randn(n, device="cuda") * (a.rank + 1)
            q_dev, stages["quantize"] = _clock(torch, lambda: k.quantize(x, MINMAX, BLOCK))
            q_host, stages["device_to_host"] = _clock(torch, lambda: q_dev.cpu().numpy())
        else:
            x = (np.arange(n, dtype=np.float32) % 97) * np.float32(a.rank + 1)
            q_host = np.empty(qbytes, np.uint8)
            _, stages["quantize"] = _clock(None, lambda: _core_testing.quantize(x.ctypes.data, F32, n, MINMAX, BLOCK,
                                                                          q_host.ctypes.data))
        c.all_reduce(np.zeros(1, np.float32))  # lines the peers up
        info, stages["wan_transfer"] = _clock(None, lambda: c._core.all_reduce(
            input_ptr=q_host.ctypes.data, output_ptr=q_out.ctypes.data, count=n, dtype=F32, op=SUM, tag=0,
            qkind=MINMAX, qblock=BLOCK))
        if torch is not None:
            q_back, stages["host_to_device"] = _clock(torch, lambda: torch.from_numpy(q_out).cuda())
            _, stages["dequantize"] = _clock(torch, lambda: k.dequantize(q_back, n, MINMAX, BLOCK, torch.float32))
        else:
            _, stages["dequantize"] = _clock(None, lambda: _core_testing.dequantize(q_out.ctypes.data, n, MINMAX, BLOCK, F32,
                                                                            y.ctypes.data, 1))
        stages["wire_bytes_sent"] = info.bytes_sent
        if rep:
            stages_all.append(stages)
    c.close()
    relay.stop()
    return {"stages": stages_all, "device": "cuda" if torch is not None else "host"}


def worker_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="gpu_quant_wan.py _worker")
    for name in ("--master", "--profile"):
        ap.add_argument(name, required=True)
    for name in ("--rank", "--world", "--k", "--size", "--repeats"):
        ap.add_argument(name, type=int, required=True)
    _procs.report(worker(ap.parse_args(argv)))
    return 0


# -- kernel throughput -----------------------------------------------------------------------------------------------
def torch_quantize(x, block: int):
    """The minmax math in plain torch: per block lo, hi, scale = (hi - lo) / 255, codes = round((x - lo) / scale)."""
    import torch

    b = x.reshape(-1, block)
    lo, hi = b.min(dim=1, keepdim=True).values, b.max(dim=1, keepdim=True).values
    scale = (hi - lo) / 255
    codes = torch.round((b - lo) / torch.where(scale > 0, scale, torch.ones_like(scale))).to(torch.uint8)
    return lo, scale, codes


def torch_dequantize(lo, scale, codes):
    return (codes.float() * scale + lo).reshape(-1)


def kernel_throughput(n: int, repeats: int) -> dict:
    """GB/s (of float32 input) of quantize and dequantize: Triton vs plain torch on CUDA; C++ vs torch on the host."""
    import numpy as np

    import torch

    from pccl_arrays import _core_testing

    cuda = _cuda()
    out = {}

    def best(fn, sync=None):
        times = []
        for _ in range(repeats + 1):
            if sync:
                sync()
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            times.append(time.perf_counter() - t0)
        return n * 4 / min(times[1:]) / 1e9

    if cuda is not None:
        from pccl_arrays.quantization import kernels

        k = kernels()
        x = torch.randn(n, device="cuda")
        q = k.quantize(x, MINMAX, BLOCK)
        lo, sc, codes = torch_quantize(x, BLOCK)
        sync = torch.cuda.synchronize
        out["device"] = "cuda"
        out["triton_quantize_GBps"] = best(lambda: k.quantize(x, MINMAX, BLOCK), sync)
        out["triton_dequantize_GBps"] = best(lambda: k.dequantize(q, n, MINMAX, BLOCK, torch.float32), sync)
        out["torch_quantize_GBps"] = best(lambda: torch_quantize(x, BLOCK), sync)
        out["torch_dequantize_GBps"] = best(lambda: torch_dequantize(lo, sc, codes), sync)
    else:
        x = torch.randn(n)
        xn = x.numpy()
        q = np.empty(_core_testing.quantized_bytes(n, BLOCK), np.uint8)
        y = np.empty(n, np.float32)
        lo, sc, codes = torch_quantize(x, BLOCK)
        out["device"] = "host (no CUDA device: Triton's interpreter is not a speed path and is not measured)"
        out["cpp_quantize_GBps"] = best(lambda: _core_testing.quantize(xn.ctypes.data, F32, n, MINMAX, BLOCK, q.ctypes.data))
        out["cpp_dequantize_GBps"] = best(lambda: _core_testing.dequantize(q.ctypes.data, n, MINMAX, BLOCK, F32, y.ctypes.data, 1))
        out["torch_quantize_GBps"] = best(lambda: torch_quantize(x, BLOCK))
        out["torch_dequantize_GBps"] = best(lambda: torch_dequantize(lo, sc, codes))
    return out


# -- parent side ---------------------------------------------------------------------------------------------------
STAGES = ("quantize", "device_to_host", "wan_transfer", "host_to_device", "dequantize")


def plot(doc: dict, path: Path) -> str:
    """A stacked bar of the stages' share of the end-to-end time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(8, 2.6))
    left = 0.0
    for s in STAGES:
        v = doc["stages_s"].get(s)
        if v is None:
            continue
        ax.barh([0], [v * 1e3], left=left, label=f"{s} {v * 1e3:.1f} ms")
        left += v * 1e3
    ax.set_yticks([])
    ax.set_xlabel("ms")
    ax.set_title(f"{doc['config']['size'] / 2**20:.0f} MiB float32, {doc['path']} path, {doc['profile']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"wrote {path}"


def report(doc: dict) -> None:
    c = doc["config"]
    print(f"\nDevice array -> quantize -> host -> emulated WAN -> host -> dequantize ({doc['path']} path)")
    print(f"{c['size'] / 2**20:.0f} MiB float32, {c['peers']} peers, k={c['k']}, {doc['profile']}")
    total = sum(doc["stages_s"].get(s, 0) for s in STAGES)
    for s in STAGES:
        v = doc["stages_s"].get(s)
        print(f"  {s:<15} " + ("not measured (no CUDA device)" if v is None else f"{v * 1e3:9.1f} ms  {v / total:6.1%}"))
    print(f"  {'total':<15} {total * 1e3:9.1f} ms; effective {doc['effective_MBps']:.1f} MB/s of float32 per peer "
          f"(wire {doc['wire_MBps']:.1f} MB/s; bound {doc['bound_MBps']:.1f} MB/s)")
    print("\nKernel throughput (GB/s of float32 input), " + doc["kernels"]["device"])
    for k, v in doc["kernels"].items():
        if k != "device":
            print(f"  {k:<24} {v:8.2f}")
    if doc["path"] == "host":
        print(f"\nNo CUDA device here: the device stages were not measured. On a GPU machine run:\n  {GPU_COMMAND}")
    print_footer(doc)


def main(argv=None) -> int:
    ap = benchmark_parser(__doc__, "gpu_quant_wan", quick="16 MiB, one repeat")
    ap.add_argument("--size", default=None, help="float32 bytes per array (default 64MiB; --quick 16MiB)")
    ap.add_argument("--profile", default="continent")
    ap.add_argument("--peers", type=int, default=2)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=None)
    bench = Run.start(ap, argv)
    a = bench.args
    pa = import_pccl_arrays()
    from pccl_arrays import wan

    profile = wan.profile_of(a.profile)
    size = parse_size(a.size or ("16MiB" if a.quick else "64MiB"))
    size = size // (4 * BLOCK) * 4 * BLOCK
    repeats = a.repeats or (1 if a.quick else 3)
    path = "cuda" if _cuda() is not None else "host"
    doc = {"benchmark": "gpu_quant_wan", "machine": f"{os.cpu_count()} cores", "path": path,
           "profile": profile.describe(),
           "config": {"size": size, "peers": a.peers, "k": a.k, "repeats": repeats, "profile": profile.name},
           "goals": [], "errors": [], "notes": []}
    master = pa.Master("127.0.0.1:0").start()
    try:
        argvs = [[__file__, "_worker", "--master", master.address, "--rank", str(r), "--world", str(a.peers),
                  "--profile", profile.name, "--k", str(a.k), "--size", str(size), "--repeats", str(repeats)]
                 for r in range(a.peers)]
        results = _procs.run_group(argvs, timeout=300)
    finally:
        master.stop()
    stages = results[0]["stages"]
    doc["stages_s"] = {s: min(r[s] for r in stages) for s in STAGES if s in stages[0]}
    total = sum(doc["stages_s"].values())
    f32_per_peer = 2 * (a.peers - 1) / a.peers * size
    doc["effective_MBps"] = f32_per_peer / total / 1e6
    doc["wire_MBps"] = min(r["wire_bytes_sent"] / r["wan_transfer"] for r in stages) / 1e6
    doc["bound_MBps"] = min(a.k * profile.conn_Bps, profile.link_Bps) / 1e6
    doc["kernels"] = kernel_throughput(min(size // 4, 16 << 20), repeats=3)
    if path == "host":
        doc["notes"].append("no CUDA device: host path only; the device stages were not measured. On a GPU "
                            f"machine: {GPU_COMMAND}")
    doc["notes"].append(plot(doc, Path(a.out).with_suffix(".png")))
    return bench.finish(doc, report)


if __name__ == "__main__":
    sys.exit(script_main(main, worker_main))
