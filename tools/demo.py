#!/usr/bin/env python3
"""Run RT-DETR on images or a video and draw the detections with Detectron2's Visualizer.

    python tools/demo.py --config-file configs/rtdetr_r50_h100.py --input a.jpg imgs/ "more/*.png" \
        --output vis/ --opts train.init_checkpoint=model.pth
    python tools/demo.py --config-file ... --video-input v.mp4 --output vis/out.mp4

Unreadable inputs are skipped and named; the exit status is non-zero if any input failed.
"""

import argparse
import glob
import logging
import os
import sys

import cv2
import numpy as np
import tqdm

# configs under projects/<Name>/ import their code as projects.<Name>: the repository root must be importable
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def expand_inputs(inputs):
    """Files, folders (their images, sorted) and glob patterns -> a list of paths (missing ones kept)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths.extend(sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS)))
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            paths.extend(matches if matches else [item])
        else:
            paths.append(item)
    return paths


def class_metadata(cfg, logger):
    """Metadata of the config's test dataset; its class names are read from the dataset if needed."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = cfg.get("dataloader", {}).get("test", {}).get("dataset", {}).get("names")
    if not isinstance(name, str) or name not in DatasetCatalog.list():
        return MetadataCatalog.get("__neo_rtdetr_no_dataset")
    metadata = MetadataCatalog.get(name)
    if not metadata.get("thing_classes", None):
        try:
            DatasetCatalog.get(name)  # loading a COCO json sets thing_classes
        except (OSError, ValueError, KeyError) as e:
            logger.warning("class names of %s unavailable (%s): drawing class ids", name, e)
    return metadata


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", help="image files, folders or glob patterns")
    src.add_argument("--video-input", help="a video file")
    src.add_argument("--from-test-set", type=int, metavar="N", help="the first N images of the config's test dataset")
    p.add_argument("--output", required=True, help="folder for images; a file (.mp4) or folder for a video")
    p.add_argument("--confidence-threshold", type=float, default=0.5)
    p.add_argument("--device", default=None)
    p.add_argument("--opts", nargs="*", default=[], help="config overrides key=value")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logger = logging.getLogger("demo")

    from detectron2.config import LazyConfig
    from detectron2.data import MetadataCatalog
    from detectron2.utils.video_visualizer import VideoVisualizer
    from detectron2.utils.visualizer import ColorMode, Visualizer

    from neo_rtdetr.config import apply_overrides_strict
    from neo_rtdetr.engine.predictor import Predictor

    cfg = apply_overrides_strict(LazyConfig.load(args.config_file), args.opts)
    predictor = Predictor(cfg, device=args.device, numpy_format="BGR")
    metadata = class_metadata(cfg, logger)
    if not metadata.get("thing_classes", None):
        metadata = MetadataCatalog.get("__neo_rtdetr_ids")
        metadata.thing_classes = [str(i) for i in range(predictor.model.num_classes)]

    def keep(inst):
        return inst[inst.scores >= args.confidence_threshold]

    if args.video_input:
        return run_video(args, predictor, metadata, keep, VideoVisualizer, ColorMode, logger)

    if args.from_test_set:
        from detectron2.data import DatasetCatalog

        inputs = [d["file_name"] for d in DatasetCatalog.get(cfg.dataloader.test.dataset.names)[: args.from_test_set]]
    else:
        inputs = expand_inputs(args.input)
    os.makedirs(args.output, exist_ok=True)
    failed = []
    for path in tqdm.tqdm(inputs, desc="images", unit="img"):
        bgr = cv2.imread(path, cv2.IMREAD_COLOR) if os.path.isfile(path) else None
        if bgr is None:
            failed.append(path)
            logger.error("cannot read %s: skipped", path)
            continue
        try:
            inst = keep(predictor(path))
        except Exception as e:  # noqa: BLE001 - one bad image must not stop the others
            failed.append(path)
            logger.error("failed on %s: %s", path, e)
            continue
        vis = Visualizer(bgr[:, :, ::-1], metadata).draw_instance_predictions(inst)
        out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".jpg")
        cv2.imwrite(out, vis.get_image()[:, :, ::-1])
        logger.info("%s: %d detections -> %s", path, len(inst), out)
    if failed:
        logger.error("%d input(s) failed: %s", len(failed), ", ".join(failed))
        return 1
    return 0


def run_video(args, predictor, metadata, keep, VideoVisualizer, ColorMode, logger) -> int:
    video = cv2.VideoCapture(args.video_input)
    if not video.isOpened():
        logger.error("cannot open video %s", args.video_input)
        return 1
    fps = video.get(cv2.CAP_PROP_FPS) or 25.0
    frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    out_path = args.output
    if os.path.isdir(out_path) or not os.path.splitext(out_path)[1]:
        os.makedirs(out_path, exist_ok=True)
        out_path = os.path.join(out_path, os.path.splitext(os.path.basename(args.video_input))[0] + ".mp4")
    writer = None
    visualizer = VideoVisualizer(metadata, ColorMode.IMAGE)
    for _ in tqdm.tqdm(range(frames) if frames else iter(int, 1), desc="frames", unit="frame"):
        ok, bgr = video.read()
        if not ok:
            break
        inst = keep(predictor(np.ascontiguousarray(bgr)))
        vis = visualizer.draw_instance_predictions(bgr[:, :, ::-1], inst).get_image()[:, :, ::-1]
        if writer is None:
            writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (vis.shape[1], vis.shape[0]))
        writer.write(vis)
    video.release()
    if writer is None:
        logger.error("no frame could be read from %s", args.video_input)
        return 1
    writer.release()
    logger.info("wrote %s", out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
