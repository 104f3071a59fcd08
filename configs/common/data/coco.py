"""COCO 2017 detection data with the official RT-DETR augmentations (640x640 squash resize).

COCO is found the Detectron2 way: $DETECTRON2_DATASETS/coco/{train2017,val2017,annotations}.
Images without annotations are kept for training, as in the official recipe.
"""

from omegaconf import OmegaConf

from detectron2.config import LazyCall as L
from detectron2.data import get_detection_dataset_dicts
from detectron2.data import transforms as T

from neo_rtdetr.data.build import build_rtdetr_test_loader, build_rtdetr_train_loader
from neo_rtdetr.data.dataset_mapper import RTDETRDatasetMapper
from neo_rtdetr.data.transforms import RandomIoUCrop, RandomPhotometricDistort, RandomZoomOut
from neo_rtdetr.evaluation.coco_evaluator import build_coco_evaluator

dataloader = OmegaConf.create()
dataloader.image_size = [640, 640]  # (height, width) of the train/eval resize
dataloader.datasets = []  # registrations to run first; COCO's builtin names need none

dataloader.train = L(build_rtdetr_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train", filter_empty=False),
    mapper=L(RTDETRDatasetMapper)(
        is_train=True,
        augmentations=[
            L(RandomPhotometricDistort)(p=0.5),
            L(RandomZoomOut)(fill=0, side_range=(1.0, 4.0), p=0.5),
            L(RandomIoUCrop)(p=0.8),
            L(T.RandomFlip)(horizontal=True),
            L(T.Resize)(shape="${dataloader.image_size}"),
        ],
        image_format="RGB",
        stop_strong_augmentation_epoch=None,  # set per model (e.g. 71 of 72)
        seed="${train.seed}",
    ),
    total_batch_size=16,
    num_workers=8,  # per rank; ~20-30 img/s each with this pipeline (docs/performance.md)
    pin_memory=True,
    pack_batches=True,  # a worker's batch as one shared-memory buffer (neo_rtdetr/data/packed_batch.py)
    seed="${train.seed}",
    multi_scale=[480, 512, 544, 576, 608, 640, 640, 640, 672, 704, 736, 768, 800],
    multi_scale_stop_epoch="${.mapper.stop_strong_augmentation_epoch}",
)

dataloader.test = L(build_rtdetr_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(RTDETRDatasetMapper)(
        is_train=False,
        augmentations=[L(T.Resize)(shape="${dataloader.image_size}")],
        image_format="RGB",
    ),
    batch_size=8,
    num_workers=4,
)

dataloader.evaluator = L(build_coco_evaluator)(dataset_name="${..test.dataset.names}", output_dir="${train.output_dir}")
