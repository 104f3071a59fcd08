"""The Triton multi-scale deformable attention kernels against the PyTorch reference.

The kernels run on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, set before Triton is imported, hence
a subprocess); the GPU run of the same comparison is in ``tests/gpu``. Forward values and all three gradients are
compared with the float64 reference on random inputs: non-square levels, a 1x1 level, points outside the maps,
bf16 values with float32 locations (the autocast case), several head dims.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from neo_rtdetr.modeling.decoder import ms_deform_attn_triton as msda_triton
from neo_rtdetr.modeling.decoder.ms_deform_attn import MSDeformableAttention, multi_scale_deformable_attention

pytestmark = pytest.mark.skipif(not msda_triton.triton_available(), reason="Triton is not installed")

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from neo_rtdetr.modeling.decoder.ms_deform_attn import multi_scale_deformable_attention as ref
    from neo_rtdetr.modeling.decoder.ms_deform_attn_triton import ms_deform_attn_triton as tri

    results = []
    cases = [
        # (shapes, B, nH, Dh, Q, P, value dtype, seed)
        ([(4, 6), (3, 2), (1, 1)], 2, 2, 8, 5, 3, torch.float32, 0),
        ([(5, 3), (2, 4)], 1, 3, 4, 7, 2, torch.bfloat16, 1),
        ([(2, 2), (3, 5), (1, 4), (2, 1)], 2, 1, 16, 3, 1, torch.float32, 2),
    ]
    for shapes, B, nH, Dh, Q, P, vdtype, seed in cases:
        g = torch.Generator().manual_seed(seed)
        S = sum(h * w for h, w in shapes)
        value = torch.randn(B, S, nH, Dh, generator=g).to(vdtype).requires_grad_()
        # points well inside, near the borders and outside every map (zeros padding)
        loc = (torch.rand(B, Q, nH, len(shapes), P, 2, generator=g) * 1.6 - 0.3).requires_grad_()
        w = torch.rand(B, Q, nH, len(shapes), P, generator=g).requires_grad_()
        out = tri(value, shapes, loc, w)
        g_out = torch.randn(out.shape, generator=g).to(out.dtype)  # the reference gets the same rounded values
        grads = torch.autograd.grad(out, (value, loc, w), g_out)
        v64 = value.detach().double().requires_grad_()
        l64 = loc.detach().double().requires_grad_()
        w64 = w.detach().double().requires_grad_()
        r = ref(v64, shapes, l64, w64)
        ref_grads = torch.autograd.grad(r, (v64, l64, w64), g_out.double())
        def rel(a, b):
            return float((a.double() - b).norm() / b.norm().clamp_min(1e-12))
        results.append({
            "dtypes": [str(out.dtype), str(grads[0].dtype), str(grads[1].dtype), str(grads[2].dtype)],
            "shape": list(out.shape),
            "out": rel(out, r.detach()),
            "grad_value": rel(grads[0], ref_grads[0]),
            "grad_loc": rel(grads[1], ref_grads[1]),
            "grad_weights": rel(grads[2], ref_grads[2]),
            "vdtype": str(vdtype),
        })
    print("RESULT " + json.dumps(results))
    """
)


def test_triton_kernels_match_reference_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    results = json.loads(line[len("RESULT "):])
    assert len(results) == 3
    for r in results:
        # float32 arithmetic: far below 1e-3; bf16 values: the reference sees the same rounded inputs, so what
        # differs is the bf16 rounding of the output and of the value gradient (~4e-3 at most)
        tol_out = 1e-2 if r["vdtype"] == "torch.bfloat16" else 1e-5
        assert r["out"] < tol_out, r
        assert r["grad_loc"] < 1e-4 and r["grad_weights"] < 1e-4, r
        assert r["grad_value"] < (1e-2 if r["vdtype"] == "torch.bfloat16" else 1e-5), r
        # output in value's dtype, each gradient in its input's dtype
        assert r["dtypes"][0] == r["vdtype"] == r["dtypes"][1] and r["dtypes"][2:] == ["torch.float32"] * 2, r


def test_dispatcher_traces_the_reference_under_torch_compile():
    """Under torch.compile the dispatcher takes the reference for a reason that does not depend on the device (the
    compiled path measured on the GPU), whatever torch.compiler.is_exporting() says there (torch 2.11: True)."""
    value, loc = torch.randn(1, 16, 2, 4), torch.rand(1, 5, 2, 2, 3, 2)
    assert msda_triton._triton_path_reason(value, loc) == "not on CUDA"

    @torch.compile(backend="eager", fullgraph=True)
    def reason_code(v, l):
        reason = msda_triton._triton_path_reason(v, l)
        return v.new_tensor(1.0 if reason is not None and "torch.compile" in reason else 0.0)

    assert float(reason_code(value, loc)) == 1.0


def test_dispatcher_uses_reference_on_cpu_and_rejects_unsupported_inputs():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    value = torch.randn(1, 16, 2, 4, generator=g)
    loc = torch.rand(1, 5, 2, 2, 3, 2, generator=g)
    w = torch.rand(1, 5, 2, 2, 3, generator=g)
    # CPU tensors: the dispatcher is exactly the reference
    assert torch.equal(msda_triton.ms_deform_attn_core(value, shapes, loc, w),
                       multi_scale_deformable_attention(value, shapes, loc, w))
    assert MSDeformableAttention(16, 2, 2, 3).ms_deformable_attn_core is msda_triton.ms_deform_attn_core
    with pytest.raises(ValueError, match="head dim 3"):
        msda_triton.ms_deform_attn_triton(torch.randn(1, 16, 2, 3), shapes, loc, w)
    with pytest.raises(ValueError, match="levels"):
        msda_triton.ms_deform_attn_triton(torch.randn(1, 5, 2, 4), [(1, 1)] * 5, torch.rand(1, 5, 2, 5, 3, 2),
                                          torch.rand(1, 5, 2, 5, 3))
    with pytest.raises(ValueError, match="cover"):
        msda_triton.ms_deform_attn_triton(torch.randn(1, 15, 2, 4), shapes, loc, w)


def test_size_arguments_are_not_specialised():
    """Every run-time size (they change with each multi-scale size and each batch's denoising query count) is
    excluded from Triton's integer specialisation, so training does not recompile the kernels again and again."""
    for kernel in (msda_triton._msda_fwd_kernel, msda_triton._msda_bwd_kernel):
        ints = [n for n in kernel.arg_names if n in ("num_values", "num_queries") or n[0] in "hws" and n[1:].isdigit()]
        assert len(ints) == 2 + 3 * msda_triton.MAX_LEVELS
        skipped = {kernel.arg_names[i] if isinstance(i, int) else i for i in kernel.do_not_specialize}
        assert set(ints) <= skipped, set(ints) - skipped
