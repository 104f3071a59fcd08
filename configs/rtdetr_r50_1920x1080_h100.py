"""RT-DETR R50 on 1920x1080 camera frames (COCO-format data), batch 16 on one H100.

Frames keep their size (no squash): the model pads them to 1920x1088 (a multiple of 32), and the
position embeddings and anchors follow the real 34x60 / 68x120 / 136x240 maps. Multi-scale is off.
Point the two registrations at your data (or override on the command line):

    python tools/lazyconfig_train_net.py --config-file configs/rtdetr_r50_1920x1080_h100.py \
        dataloader.datasets.0.json_file=/data/cam/train.json dataloader.datasets.0.image_root=/data/cam/images \
        dataloader.datasets.1.json_file=/data/cam/val.json dataloader.datasets.1.image_root=/data/cam/images \
        model.num_classes=3
"""

from detectron2.config import LazyCall as L

from neo_rtdetr.data.catalog import register_coco_format_dataset

from .rtdetr_r50_h100 import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "./output/rtdetr_r50_1920x1080_h100"
dataloader.datasets = [
    L(register_coco_format_dataset)(name="camera_train", json_file="datasets/camera/annotations/train.json", image_root="datasets/camera/images"),
    L(register_coco_format_dataset)(name="camera_val", json_file="datasets/camera/annotations/val.json", image_root="datasets/camera/images"),
]
dataloader.train.dataset.names = "camera_train"
dataloader.test.dataset.names = "camera_val"
dataloader.image_size = [1080, 1920]
dataloader.train.multi_scale = None
dataloader.train.total_batch_size = 16
