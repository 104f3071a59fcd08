#!/usr/bin/env python3
"""Registers, stack (register spills) and machine-instruction counts of the deformable-attention Triton kernels,
compiled for a CUDA architecture on any machine: no GPU is needed (Triton's compiler and the ptxas / cuobjdump it
ships with). For judging a kernel change before there is a GPU to time it.

    python tools/triton_kernel_report.py --arch 90 --head-dims 32 --levels 3 --dtypes bf16,fp32 --output kernels.json

Each kernel is compiled as it runs: the launch constants of ``launch_meta`` (BLOCK_Q, warps), run-time sizes not
specialised; value (and output gradient) in ``--dtypes``, locations and weights in float32. A stack above 0 bytes
means the compiler spilled registers to local memory.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    p.add_argument("--num-heads", type=int, default=8)
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--head-dims", default="32", help="comma list (RT-DETR: 256 channels / 8 heads = 32)")
    p.add_argument("--levels", default="3", help="comma list of level counts (RT-DETR: 3)")
    p.add_argument("--dtypes", default="bf16,fp32", help="value dtypes")
    p.add_argument("--output", default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def _tool(name):
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.isfile(path):
        raise SystemExit(f"{name} not found at {path}: this Triton installation has no NVIDIA tools")
    return path


def kernel_stats(kernel, pointer_types, constants, arch, num_warps):
    """Compile ``kernel`` for ``sm_<arch>``: (registers, stack bytes, {opcode: count}) of its machine code."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from neo_rtdetr.modeling.decoder import ms_deform_attn_triton as msda

    signature = {**pointer_types, **{n: "i32" for n in msda._RUNTIME_INTS}, **{k: "constexpr" for k in constants}}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs=constants), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True, check=True)
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True)
    found = [re.search(rf"{key}:(\d+)", usage.stdout) for key in ("REG", "STACK")]
    if not all(found):
        raise RuntimeError(f"cuobjdump -res-usage gave no REG/STACK figures for {kernel.__name__}:\n{usage.stdout}")
    registers, stack = (int(m.group(1)) for m in found)
    opcodes = collections.Counter()
    for line in sass.stdout.splitlines():
        m = re.match(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", line)
        if m:
            opcodes[m.group(1)] += 1
    return registers, stack, opcodes


def main(argv=None) -> int:
    args = parse_args(argv)
    from neo_rtdetr.modeling.decoder import ms_deform_attn_triton as msda

    if not msda.triton_available():
        raise SystemExit("Triton is not installed")
    rows = []
    print(f"{'kernel':<9}{'value':<7}{'head dim':>9}{'levels':>7}{'regs':>6}{'stack B':>9}{'instructions':>14}")
    for dtype in args.dtypes.split(","):
        for head_dim in (int(v) for v in args.head_dims.split(",")):
            for levels in (int(v) for v in args.levels.split(",")):
                block_q, num_warps = msda.launch_meta(head_dim)
                constants = dict(NUM_HEADS=args.num_heads, NUM_LEVELS=levels, NUM_POINTS=args.points,
                                 HEAD_DIM=head_dim, BLOCK_Q=block_q)
                loc = {"loc_ptr": "*fp32", "attw_ptr": "*fp32"}
                kernels = {
                    "forward": (msda._msda_fwd_kernel,
                                {"value_ptr": f"*{dtype}", **loc, "out_ptr": f"*{dtype}"}),
                    "backward": (msda._msda_bwd_kernel,
                                 {"value_ptr": f"*{dtype}", **loc, "grad_out_ptr": f"*{dtype}",
                                  "grad_value_ptr": "*fp32", "grad_loc_ptr": "*fp32", "grad_attw_ptr": "*fp32"}),
                }
                for name, (kernel, pointers) in kernels.items():
                    registers, stack, opcodes = kernel_stats(kernel, pointers, constants, args.arch, num_warps)
                    row = dict(kernel=name, dtype=dtype, head_dim=head_dim, levels=levels, points=args.points,
                               num_heads=args.num_heads, block_q=block_q, num_warps=num_warps, arch=args.arch,
                               registers=registers, stack_bytes=stack, instructions=sum(opcodes.values()),
                               opcodes=dict(opcodes))
                    rows.append(row)
                    print(f"{name:<9}{dtype:<7}{head_dim:>9}{levels:>7}{registers:>6}{stack:>9}"
                          f"{row['instructions']:>14}", flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"arch": args.arch, "rows": rows}, f, indent=1)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
