#!/usr/bin/env python3
"""Convert official rtdetr_pytorch / rtdetrv2_pytorch or Hugging Face RT-DETR / RT-DETRv2 weights into a
Detectron2 checkpoint.

    python tools/convert_checkpoint.py --source official --input rtdetr_r50vd_6x_coco_from_paddle.pth \\
        --config-file configs/common/models/rtdetr_r50.py --output rtdetr_r50.pth
    python tools/convert_checkpoint.py --source hf --input ./rtdetr_r18vd/ \\
        --config-file configs/common/models/rtdetr_r18.py --output rtdetr_r18.pth --num-classes 6
    python tools/convert_checkpoint.py --source official --input rtdetrv2_r50vd_6x_coco_ema.pth \\
        --config-file projects/RTDETRv2/configs/models/rtdetrv2_r50.py --output rtdetrv2_r50.pth

The model is built from --config-file (a model config or a training config with a top-level
``model``). The weights must fit it exactly; only with --num-classes different from the
checkpoint's class count are the class heads re-initialised (and named). The result is checked by
loading it with Detectron2's DetectionCheckpointer (no missing / unexpected keys) before it is moved
into place, so a failed conversion leaves no output file.

Official files may hold non-tensor Python objects and then need torch.load(weights_only=False),
i.e. full pickle, which can execute code from the file: only convert files you trust, or pass
--weights-only to refuse such files.
"""

import argparse
import logging
import os
import sys
import warnings

# configs under projects/<Name>/ import their code as projects.<Name>: the repository root must be importable
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, choices=("official", "hf"),
                        help="official .pth (v1 or v2) or HF folder (rt_detr or rt_detr_v2)")
    parser.add_argument("--input", required=True, help="official .pth file, or HF folder (config.json + weights)")
    parser.add_argument("--config-file", required=True, help="LazyConfig with a top-level `model`")
    parser.add_argument("--output", required=True, help="Detectron2 checkpoint to write (.pth)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="build the model with K classes; if the checkpoint has another count, "
                             "its class heads are re-initialised")
    parser.add_argument("--weights-only", action="store_true",
                        help="never fall back to torch.load(weights_only=False) (for files you do not trust)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")  # noise from detectron2's import

    from detectron2.config import LazyConfig

    from neo_rtdetr.checkpoint.convert import build_model_from_config, convert_checkpoint, save_detectron2_checkpoint

    try:
        if os.path.abspath(args.input) == os.path.abspath(args.output):
            raise ValueError("--output must differ from --input")
        cfg = LazyConfig.load(args.config_file)
        if args.opts:
            cfg = LazyConfig.apply_overrides(cfg, args.opts)
        config_classes = cfg.model.num_classes if "model" in cfg else None
        model = build_model_from_config(args.config_file, args.opts, num_classes=args.num_classes)
        if args.num_classes is not None and args.num_classes != config_classes:
            print(f"num_classes: {args.num_classes} (--num-classes overrides the config's {config_classes})")
        else:
            print(f"num_classes: {model.num_classes} (from the config)")
        state, report = convert_checkpoint(
            args.source, args.input, model, num_classes=args.num_classes, allow_unsafe_pickle=not args.weights_only
        )
        print(f"read {args.source} weights from {args.input} [{report.origin}], "
              f"{report.checkpoint_num_classes} classes")
        if report.unsafe_pickle:
            print("warning: the input needed torch.load(weights_only=False) (full pickle); trusted files only")
        print(f"reconciled with the model: {report}")
        out = save_detectron2_checkpoint(
            state, args.output, source=args.source, num_classes=model.num_classes, verify_model=model
        )
    except (ValueError, FileNotFoundError, KeyError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}: {len(state)} tensors, loads with DetectionCheckpointer with no missing/unexpected keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
