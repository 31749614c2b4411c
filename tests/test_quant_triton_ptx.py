"""What a GPU would run, checked without one: the Triton kernels compiled to PTX for sm_90 (no device needed),
and the arithmetic the interpreter cannot show (tests/test_quant_triton.py runs the kernels themselves)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

_missing = [m for m in ("torch", "triton") if importlib.util.find_spec(m) is None]
needs_triton = pytest.mark.skipif(bool(_missing) and not os.environ.get("CI"),
                                  reason=f"{' and '.join(_missing)} not installed")  # in CI a missing one fails

# Runs in a fresh process: the interpreter patches triton.language for the whole process, so nothing compiles
# in one that has run interpreted kernels.
_PTX_SCRIPT = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import pccl_arrays.kernels
quantize, dequantize = sys.modules["pccl_arrays.kernels.quantize"], sys.modules["pccl_arrays.kernels.dequantize"]

def ptx(kernel, signature, constexprs):
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    target = GPUTarget("cuda", 90, 32)
    return triton.compile(source, target=target, options={"enable_fp_fusion": False}).asm["ptx"]

out = {}
for kind in (1, 2):
    for x in ("fp16", "bf16", "fp32", "fp64"):
        signature = {"x_ptr": "*i16" if x == "bf16" else "*" + x, "q_ptr": "*u8", "n": "i64", "B": "i32"}
        out[f"quantize kind {kind} {x}"] = ptx(
            quantize.quantize_kernel, signature, {"KIND": kind, "IN_BF16": x == "bf16", "CHUNK": 1024})
    for code, bits in enumerate(("i16", "i16", "i32", "i64")):
        signature = {"q_ptr": "*u8", "out_ptr": "*" + bits, "n": "i32", "B": "i32", "divide_by": "fp32"}
        out[f"dequantize kind {kind} out {code}"] = ptx(
            dequantize.dequantize_kernel, signature,
            {"KIND": kind, "OUT": code, "NAN": 0, "DIVIDE": True, "CHUNK": 4096})
print(json.dumps(out))
"""


@needs_triton
@pytest.mark.timeout(300)
def test_kernels_compile_to_correctly_rounded_ptx():
    """Compiles (no GPU needed) what a GPU would run, and checks the arithmetic the interpreter cannot show:
    IEEE division, no FMA, no flush to zero, the rne magic number kept, float64 rounded to nearest. It also
    catches what only the compiler rejects (a kernel reading a global that is not constexpr)."""
    import json
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # From the tests' folder, so that the installed package is imported, not the checkout's unbuilt one.
    run = subprocess.run([sys.executable, "-c", _PTX_SCRIPT], cwd=Path(__file__).resolve().parent, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ptx = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(ptx) == 16
    for name, code in ptx.items():
        assert "div.rn.f32" in code, name
        for forbidden in ("fma", ".ftz", "div.full", "div.approx", "rcp.approx"):
            assert forbidden not in code, (name, forbidden)
        if name.startswith("quantize"):
            assert "0f4B400000" in code and "0fCB400000" in code, name  # (v + 1.5 * 2**23) - 1.5 * 2**23
    assert "cvt.rn.f32.f64" in ptx["quantize kind 1 fp64"]
    assert "mul.rn.f32" in ptx["dequantize kind 1 out 2"] and "add.rn.f32" in ptx["dequantize kind 1 out 2"]
    assert "cvt.rn.f16.f32" in ptx["dequantize kind 2 out 0"]
