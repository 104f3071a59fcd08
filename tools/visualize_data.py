#!/usr/bin/env python3
"""Draw what the training loader feeds the model: augmented, multi-scale-resized images and their targets.

    python tools/visualize_data.py --config-file configs/rtdetr_tiny_synthetic_demo.py --output vis_data/ \
        --num-batches 2 [--start-iter 0] [--scale 2] [--opts key=value ...]

For every image of the first --num-batches per-rank batches (from --start-iter), writes
iter{I}_{k}_{name}.png: the training target boxes (gt_boxes_cxcywh, normalised, mapped back to
pixels) solid green with their class names (MetadataCatalog of dataloader.train.dataset.names),
and the pixel boxes gt_boxes dashed magenta on top (they lie on the green boxes when the two
agree). The config's dataset registrations run first; the loader runs in this process
(num_workers=0). The exit status is 1 if the two box copies of an image differ by more than 0.5 px.
"""

import argparse
import logging
import os
import sys

# configs under projects/<Name>/ import their code as projects.<Name>: the repository root must be importable
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="training LazyConfig (dataloader.train)")
    p.add_argument("--output", required=True, help="folder for the PNG files")
    p.add_argument("--num-batches", type=int, default=1, help="per-rank batches to draw (default 1)")
    p.add_argument("--start-iter", type=int, default=0,
                   help="first iteration to draw (its epoch decides the stop-epoch augmentation policy)")
    p.add_argument("--scale", type=float, default=1.0, help="drawing scale (e.g. 2 for small images)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger("visualize_data")
    if args.num_batches < 1 or args.start_iter < 0 or args.scale <= 0:
        print("error: --num-batches must be >= 1, --start-iter >= 0 and --scale > 0", file=sys.stderr)
        return 1

    import cv2
    from detectron2.config import LazyConfig

    from neo_rtdetr.config import apply_overrides_strict
    from neo_rtdetr.utils.data_visualization import (
        box_disagreement,
        build_train_loader_for_visualization,
        class_names_for,
        draw_train_sample,
        iterate_train_batches,
    )

    try:
        cfg = apply_overrides_strict(LazyConfig.load(args.config_file), args.opts)
    except (KeyError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    loader = build_train_loader_for_visualization(cfg, num_workers=0)
    num_classes = cfg.model.get("num_classes", None) if "model" in cfg else None
    class_names = class_names_for(cfg.dataloader.train.dataset.names, num_classes)
    image_format = cfg.dataloader.train.mapper.get("image_format", "RGB")
    os.makedirs(args.output, exist_ok=True)

    bad = []
    count = 0
    for iteration, batch in iterate_train_batches(loader, args.num_batches, args.start_iter):
        for k, sample in enumerate(batch):
            drawn = draw_train_sample(sample, class_names, image_format=image_format, scale=args.scale)
            stem = os.path.splitext(os.path.basename(str(sample.get("file_name", "image"))))[0]
            path = os.path.join(args.output, f"iter{iteration:06d}_{k:02d}_{stem}.png")
            cv2.imwrite(path, drawn[:, :, ::-1])
            diff = box_disagreement(sample)
            h, w = sample["image"].shape[-2:]
            n = len(sample["instances"])
            print(f"{path}: {w}x{h}, {n} boxes, epoch {sample.get('_epoch', '?')}, "
                  f"gt_boxes vs gt_boxes_cxcywh max difference {diff:.3g} px")
            if diff > 0.5:
                bad.append(path)
            count += 1
    print(f"wrote {count} images to {args.output}")
    if bad:
        logger.error("gt_boxes and gt_boxes_cxcywh disagree by more than 0.5 px in: %s", ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
