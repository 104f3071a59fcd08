"""The embedded synthetic shapes dataset (generated on first use), with the RT-DETR pipeline.

Same pipeline as COCO (configs/common/data/coco.py); only the datasets and sizes differ.
"""

from detectron2.config import LazyCall as L

from neo_rtdetr.data.catalog import SYNTHETIC_TRAIN, SYNTHETIC_VAL, register_synthetic_dataset

from .coco import dataloader

# cache_dir None: $NEO_RTDETR_CACHE or ~/.cache/neo_rtdetr
dataloader.datasets = [L(register_synthetic_dataset)(cache_dir=None)]
dataloader.train.dataset.names = SYNTHETIC_TRAIN
dataloader.test.dataset.names = SYNTHETIC_VAL
dataloader.image_size = [320, 320]
dataloader.train.multi_scale = [256, 288, 320, 320, 352, 384]
