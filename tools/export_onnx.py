#!/usr/bin/env python3
"""Export a deployable RT-DETR (RepVgg fused, post-processing included) to ONNX and verify it.

    python tools/export_onnx.py --config-file configs/rtdetr_r50_h100.py --checkpoint model.pth \\
        --output rtdetr_r50.onnx --size 640 640
    python tools/export_onnx.py --config-file configs/rtdetr_r50_1920x1080_h100.py \\
        --output rtdetr_r50_1088x1920.onnx --size 1088 1920 --opts train.init_checkpoint=model.pth

Graph: inputs ``images`` [N, 3, H, W] float32 RGB in [0, 1] and ``orig_target_sizes`` [N, 2] float32 (w, h);
outputs ``labels`` int64 [N, k], ``boxes`` float32 [N, k, 4] (xyxy, pixels of orig_target_sizes), ``scores``
float32 [N, k] (k = min(model.num_top_queries, num_queries * num_classes), static). H, W are fixed; the batch
N is dynamic. Official weights expect the squashed (resized) frame; to keep 1920x1080 frames unscaled, pad
them to 1920x1088 and pass orig_target_sizes = (1920, 1088).

Unless --no-check, the graph is checked with onnx.checker and run with ONNX Runtime on random batches of the
export batch size and of another size (dynamic axis); labels must equal PyTorch's, scores and boxes must be
within the tolerances of neo_rtdetr/export/onnx_export.py. The exit status is 1 if they are not, 2 for bad
arguments.
"""

import argparse
import logging
import os
import sys
import time
import warnings

# configs under projects/<Name>/ import their code as projects.<Name>: the repository root must be importable
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--checkpoint", default=None,
                   help="weights (EMA preferred); default: train.init_checkpoint of the config / --opts")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--size", type=int, nargs=2, default=[640, 640], metavar=("H", "W"),
                   help="input height and width, multiples of 32 (default 640 640)")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset: >= 16 with the torchscript exporter (default 17), >= 18 with dynamo (default 18)")
    p.add_argument("--batch", type=int, default=2, help="batch size of the example input, >= 2 (default 2)")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                   help="torch.onnx.export(dynamo=False) tracer (default) or the torch.export-based exporter "
                        "(needs onnxscript)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    p.add_argument("--check-batches", type=int, nargs="+", default=None, metavar="N",
                   help="batch sizes of the comparison (default: the export batch and 1)")
    p.add_argument("--image", default=None,
                   help="compare on this image (resized to the export size) instead of random inputs")
    p.add_argument("--score-atol", type=float, default=None, help="score tolerance (default: SCORE_ATOL = 5e-4)")
    p.add_argument("--box-atol-rel", type=float, default=None,
                   help="box tolerance as a fraction of the image side (default: BOX_ATOL_REL = 1e-4)")
    p.add_argument("--opts", nargs="*", default=[], help="config overrides key=value")
    return p.parse_args(argv)


def _load_image(path: str, height: int, width: int):
    import cv2
    import torch

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    rgb = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)[:, :, ::-1]
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255.0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("onnxscript").setLevel(logging.WARNING)  # the dynamo exporter's optimiser is chatty
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")  # noise from detectron2's import
    logger = logging.getLogger("export_onnx")

    from neo_rtdetr.export.deploy_model import check_export_size

    height, width = args.size
    try:
        check_export_size(height, width)
        if args.batch < 2:
            raise ValueError(f"--batch must be >= 2 (a batch of 1 gets specialised into the graph), got {args.batch}")
        min_opset = 18 if args.exporter == "dynamo" else 16
        if args.opset is not None and args.opset < min_opset:
            raise ValueError(f"--opset {args.opset} with the {args.exporter} exporter: needs >= {min_opset} "
                             "(GridSample needs 16; the dynamo exporter cannot go below 18)")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import torch
    from detectron2.config import LazyConfig, instantiate

    from neo_rtdetr.checkpoint.checkpointer import RTDETRCheckpointer
    from neo_rtdetr.config import apply_overrides_strict
    from neo_rtdetr.export.deploy_model import RTDETRDeployModel
    from neo_rtdetr.export.onnx_export import BOX_ATOL_REL, SCORE_ATOL, export_onnx, onnx_io_shapes, verify_onnx

    cfg = apply_overrides_strict(LazyConfig.load(args.config_file), args.opts)
    model = instantiate(cfg.model).eval()
    checkpoint = args.checkpoint or cfg.get("train", {}).get("init_checkpoint") or None
    if checkpoint:
        RTDETRCheckpointer(model).load_for_inference(checkpoint)
    else:
        logger.warning("no checkpoint given (--checkpoint or train.init_checkpoint): exporting random weights")
    deploy = RTDETRDeployModel(model, inplace=True)

    start = time.perf_counter()
    export_onnx(deploy, args.output, height, width, batch=args.batch, opset=args.opset, exporter=args.exporter)
    size_mb = os.path.getsize(args.output) / 2**20
    import onnx

    opset = next((o.version for o in onnx.load(args.output).opset_import if o.domain in ("", "ai.onnx")), "?")
    logger.info("exported %s (%.1f MiB, opset %s, %s exporter) in %.1f s", args.output, size_mb, opset,
                args.exporter, time.perf_counter() - start)
    for name, dims in onnx_io_shapes(args.output).items():
        logger.info("  %-18s %s", name, dims)
    if args.no_check:
        return 0

    onnx.checker.check_model(args.output)
    images = _load_image(args.image, height, width) if args.image else None
    batches = args.check_batches or [args.batch, 1]
    results = verify_onnx(args.output, deploy, height, width, batches=batches, images=images,
                          threads=torch.get_num_threads(),
                          score_atol=SCORE_ATOL if args.score_atol is None else args.score_atol,
                          box_atol_rel=BOX_ATOL_REL if args.box_atol_rel is None else args.box_atol_rel)
    for r in results:
        print(f"ONNX Runtime vs PyTorch, {r.summary()}")
    if not all(r.ok for r in results):
        print("error: the ONNX outputs differ from PyTorch beyond the tolerances", file=sys.stderr)
        return 1
    print(f"max abs difference: scores {max(r.scores_max_abs for r in results):.3g}, "
          f"boxes {max(r.boxes_max_abs_px for r in results):.3g} px; labels equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
