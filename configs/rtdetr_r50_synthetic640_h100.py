"""RT-DETR R50, the COCO recipe (640, multi-scale, strong augmentations, bf16, EMA) on synthetic COCO-sized images.

A throughput and end-to-end check without COCO: the images are generated on first use (JPEGs of 480-640 px, up
to 20 objects, like COCO's typical sizes), so the data pipeline does the same work per image as on COCO.

    python tools/lazyconfig_train_net.py --config-file configs/rtdetr_r50_synthetic640_h100.py train.max_iter=300
    python tools/benchmark_data.py --config-file configs/rtdetr_r50_synthetic640_h100.py
"""

from detectron2.config import LazyCall as L

from neo_rtdetr.data.catalog import register_synthetic_dataset

from .rtdetr_r50_h100 import dataloader, lr_multiplier, model, optimizer, train

model.num_classes = 6
dataloader.datasets = [
    L(register_synthetic_dataset)(
        cache_dir=None, train_name="synthetic640_train", val_name="synthetic640_val",
        num_train=1024, num_val=64, min_size=480, max_size=640, max_objects=20,
    )
]
dataloader.train.dataset.names = "synthetic640_train"
dataloader.test.dataset.names = "synthetic640_val"
dataloader.train.num_workers = 12
train.output_dir = "./output/rtdetr_r50_synthetic640_h100"
train.epochs = 72
