"""RT-DETRv2-M (R50-m) on COCO 2017, the official v2 recipe (rtdetrv2_r50vd_m_7x_coco): 84 epochs, total batch 16,
strong augmentations and multi-scale off from epoch 81, backbone lr 1e-5, no weight decay on encoder/decoder norms;
bf16 AMP, EMA 0.9999 (warm-up 2000), grad clip 0.1, linear lr warm-up 2000 iterations, eval every epoch.

Everything but the model's decoder, the schedule and the parameter rules is the v1 config of the same size
(``configs/rtdetr_r50m_h100.py``: data, SyncBN, channels-last, EMA, AMP, clipping).

    python tools/lazyconfig_train_net.py --config-file projects/RTDETRv2/configs/rtdetrv2_r50m_h100.py --num-gpus 8
"""

from ....configs.rtdetr_r50m_h100 import dataloader, lr_multiplier, model, optimizer, train
from .common.recipe import RULES_R50 as _RULES
from .models.v2_parts import to_v2

to_v2(model)
train.output_dir = "./output/rtdetrv2_r50m_h100"
train.epochs = 84
# v2 stop-epoch policy: strong augmentations (and multi-scale, which follows the mapper) stop here
dataloader.train.mapper.stop_strong_augmentation_epoch = 81
optimizer.params.rules = _RULES
