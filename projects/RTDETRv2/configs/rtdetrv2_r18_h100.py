"""RT-DETRv2-S (R18) on COCO 2017, the official v2 recipe (rtdetrv2_r18vd_120e_coco): 120 epochs, total batch 16,
strong augmentations off from epoch 117, no multi-scale, backbone at the base lr 1e-4, no weight decay on any norm;
bf16 AMP, EMA 0.9999 (warm-up 2000), grad clip 0.1, linear lr warm-up 2000 iterations, eval every epoch.

    python tools/lazyconfig_train_net.py --config-file projects/RTDETRv2/configs/rtdetrv2_r18_h100.py --num-gpus 8
"""

from ....configs.common.data.coco import dataloader
from ....configs.common.optim import AdamW as optimizer
from ....configs.common.schedule import lr_multiplier
from ....configs.common.train import train
from .common.recipe import RULES_R18 as _RULES
from .models.rtdetrv2_r18 import model

train.output_dir = "./output/rtdetrv2_r18_h100"
train.epochs = 120
train.sync_bn = True  # as the v1 configs: SyncBN where the backbone BN trains (DDP)
dataloader.train.total_batch_size = 16
# v2 stop-epoch policy: strong augmentations (and multi-scale, which follows the mapper) stop here
dataloader.train.mapper.stop_strong_augmentation_epoch = 117
dataloader.train.multi_scale = None  # official: collate_fn scales ~
optimizer.params.rules = _RULES
