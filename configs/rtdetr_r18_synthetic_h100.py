"""GPU variant of the demo: RT-DETR R18 (official architecture) on the synthetic shapes, a few minutes on one H100."""

from .common.data.synthetic import dataloader
from .common.models.rtdetr_r18 import model
from .common.optim import AdamW as optimizer
from .common.schedule import lr_multiplier
from .common.train import train

model.num_classes = 6
train.output_dir = "./output/rtdetr_r18_synthetic_h100"
train.epochs = 24
train.eval_period_epochs = 8
train.checkpoint_period_epochs = 8
train.ema.warmups = 500
dataloader.train.total_batch_size = 16
dataloader.train.num_workers = 8
dataloader.train.mapper.stop_strong_augmentation_epoch = 22
optimizer.params.rules = [{"pattern": r"^(?:encoder|decoder)\..*(?:norm|bn|bias)", "weight_decay": 0.0}]
lr_multiplier.warmup_iters = 300
# NHWC convolutions: 1.12-1.16x the 1088x1920 train step on an H200; at 640 the runs disagree (0.74-1.16x in
# the same run as the default layout): docs/performance.md
model.channels_last = True
