"""RT-DETR R101 (PResNet101-vd) on COCO 2017: 72 epochs (6x), total batch 16, bf16 AMP, EMA, grad clip 0.1, eval every epoch.

    python tools/lazyconfig_train_net.py --config-file configs/rtdetr_r101_h100.py --num-gpus 8
"""

from .common.data.coco import dataloader
from .common.models.rtdetr_r101 import model
from .common.optim import AdamW as optimizer
from .common.optim import RULES_R101 as _RULES
from .common.schedule import lr_multiplier
from .common.train import train

train.output_dir = "./output/rtdetr_r101_h100"
train.epochs = 72
train.sync_bn = True  # official runtime.yml: SyncBN under DDP for every size (the encoder BNs always train)
dataloader.train.total_batch_size = 16
# strong augmentations and multi-scale stop for the last epoch (v2 "stop-epoch" policy)
dataloader.train.mapper.stop_strong_augmentation_epoch = 71
optimizer.params.rules = _RULES
# NHWC convolutions: 1.12-1.16x the 1088x1920 train step on an H200; at 640 the runs disagree (0.74-1.16x in
# the same run as the default layout): docs/performance.md
model.channels_last = True
