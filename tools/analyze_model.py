#!/usr/bin/env python3
"""Parameter counts and FLOPs (fvcore) of the model of a LazyConfig, per module.

    python tools/analyze_model.py --config-file configs/rtdetr_r50_h100.py
    python tools/analyze_model.py --config-file configs/common/models/rtdetr_r18.py --size 640 640 --depth 2
    python tools/analyze_model.py --config-file configs/rtdetr_r50_1920x1080_h100.py --size 1080 1920

Parameters: total, trainable, frozen, and the frozen-BatchNorm affine weights (buffers) counted
separately; total + frozen-BN affine is what the official RT-DETR figures count.
FLOPs: fvcore's FlopCountAnalysis of model.forward_network(x) in eval mode, batch 1, on the CPU.
fvcore counts one fused multiply-add as one flop and skips the operators it has no handle for
(they are listed); attention (scaled_dot_product_attention) is counted by a handle of
neo_rtdetr.utils.model_analysis. --deploy analyses the inference form (RepVgg blocks fused: fewer
parameters and FLOPs). The input size defaults to the config's dataloader.image_size, else
640x640, and is padded up to the model's size_divisibility (32) like the model does.
"""

import argparse
import logging
import os
import sys
import warnings

# configs under projects/<Name>/ import their code as projects.<Name>: the repository root must be importable
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="LazyConfig with a top-level `model`")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="input height and width (default: dataloader.image_size of the config, else 640 640)")
    p.add_argument("--depth", type=int, default=3, help="module depth of the per-module table (default 3)")
    p.add_argument("--deploy", action="store_true",
                   help="analyse the inference form: RepVgg blocks fused (model.convert_to_deploy())")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=UserWarning)  # jit tracer noise
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    from neo_rtdetr.utils.model_analysis import analyze_model, build_model_for_analysis, format_analysis

    try:
        model, config_size = build_model_for_analysis(args.config_file, args.opts)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.deploy:
        model.convert_to_deploy()
    size = tuple(args.size) if args.size else (config_size or (640, 640))
    if min(size) <= 0 or args.depth < 0:
        print(f"error: --size must be positive and --depth >= 0 (got {size}, {args.depth})", file=sys.stderr)
        return 1
    result = analyze_model(model, size, max_depth=args.depth)
    print(f"config: {args.config_file}" + (f" with {' '.join(args.opts)}" if args.opts else ""))
    print(f"model: {type(model).__name__}, {getattr(model, 'num_classes', '?')} classes"
          + (", deploy form (RepVgg blocks fused)" if args.deploy else ""))
    print(format_analysis(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
