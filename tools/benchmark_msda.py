#!/usr/bin/env python3
"""The Triton deformable-attention op alone, per launch configuration (query block x warps), against the PyTorch
``grid_sample`` reference: forward and forward+backward time on the decoder's shapes, and each configuration's
results against the current one's (they must agree: the configuration only changes how queries are grouped).

    python tools/benchmark_msda.py --launch 32x4,32x8,16x4 --output msda.json     # on a GPU: R50 decoder at 640

The current configuration is ``launch_meta`` in neo_rtdetr/modeling/decoder/ms_deform_attn_triton.py;
tools/triton_kernel_report.py shows the registers and spills of each without a GPU. On the CPU the op runs under
Triton's interpreter (``TRITON_INTERPRET=1`` set before the start: slow, for checking the tool on tiny shapes).
"""

import argparse
import json
import os
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--launch", default="32x4,32x8,16x4,16x8,64x8", help="BLOCK_Qxnum_warps list")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--queries", type=int, default=500, help="300 queries + the padded denoising queries")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--levels", default="80x80,40x40,20x20", help="HxW per level (640 input, strides 8/16/32)")
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="value dtype (locations: fp32)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--device", default="cuda")
    p.add_argument("--output", default=None)
    return p.parse_args(argv)


def _time(fn, device, warmup, iters):
    import torch

    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / max(iters, 1) * 1e3


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from neo_rtdetr.modeling.decoder import ms_deform_attn_triton as msda
    from neo_rtdetr.modeling.decoder.ms_deform_attn import multi_scale_deformable_attention

    if not msda.triton_available():
        raise SystemExit("Triton is not installed")
    device = torch.device(args.device)
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("the Triton kernels need a CUDA device (or TRITON_INTERPRET=1 on the CPU)")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.levels.split(",")]
    g = torch.Generator().manual_seed(0)
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(args.batch, tokens, args.heads, args.head_dim, generator=g).to(device, dtype)
    loc = (torch.rand(args.batch, args.queries, args.heads, len(shapes), args.points, 2, generator=g) * 1.2 - 0.1)
    loc = loc.to(device)
    weights = torch.rand(args.batch, args.queries, args.heads, len(shapes), args.points, generator=g).to(device)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    grad_out = torch.randn(args.batch, args.queries, args.heads * args.head_dim, generator=g).to(device, dtype)
    inputs = [t.detach().requires_grad_() for t in (value, loc, weights)]

    def run(op, backward):
        v, l, w = inputs
        if not backward:
            with torch.no_grad():
                return op(v, shapes, l, w), None
        out = op(v, shapes, l, w)
        return out, torch.autograd.grad(out, (v, l, w), grad_out)

    current = msda.launch_meta(args.head_dim)
    configs = [tuple(int(v) for v in c.split("x")) for c in args.launch.split(",")]
    if current not in configs:
        configs.insert(0, current)
    results, rows = {}, []
    real_launch_meta = msda.launch_meta
    try:
        for block_q, warps in configs:
            msda.launch_meta = lambda _head_dim, _c=(block_q, warps): _c
            op = msda.ms_deform_attn_triton
            fwd = _time(lambda: run(op, False), device, args.warmup, args.iters)
            both = _time(lambda: run(op, True), device, args.warmup, args.iters)
            results[(block_q, warps)] = run(op, True)
            rows.append(dict(what=f"triton {block_q}x{warps}", block_q=block_q, num_warps=warps,
                             current=(block_q, warps) == current, forward_ms=fwd, forward_backward_ms=both))
    finally:
        msda.launch_meta = real_launch_meta
    ref_fwd = _time(lambda: run(multi_scale_deformable_attention, False), device, args.warmup, args.iters)
    ref_both = _time(lambda: run(multi_scale_deformable_attention, True), device, args.warmup, args.iters)
    results["reference"] = run(multi_scale_deformable_attention, True)
    rows.append(dict(what="grid_sample reference", forward_ms=ref_fwd, forward_backward_ms=ref_both))

    base_out, base_grads = results[current]
    print(f"{'op':<24}{'forward ms':>12}{'fwd+bwd ms':>12}   max |difference| to {current[0]}x{current[1]} "
          f"(output, grad value, grad locations, grad weights)")
    for row in rows:
        out, grads = results[(row["block_q"], row["num_warps"]) if "block_q" in row else "reference"]
        row["max_abs_diff"] = [float((a.detach().float() - b.detach().float()).abs().max())
                               for a, b in zip((out, *grads), (base_out, *base_grads))]
        diffs = "  " + " ".join(f"{d:.1e}" for d in row["max_abs_diff"]) + ("  (current)" if row.get("current") else "")
        print(f"{row['what']:<24}{row['forward_ms']:>12.3f}{row['forward_backward_ms']:>12.3f}{diffs}", flush=True)
    if args.output:
        name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (Triton interpreter)"
        with open(args.output, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "shapes": shapes, "batch": args.batch,
                       "queries": args.queries, "dtype": args.dtype, "rows": rows}, f, indent=1)
        print(f"wrote {args.output} ({name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
