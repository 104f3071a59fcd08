"""The README's main job: a tiny RT-DETR trained from scratch on the embedded synthetic shapes, on CPU.

Same architecture family and pipeline as the COCO configs (narrow R18-based model, 160x160 inputs).
On 2 CPU cores it trains in minutes; on a GPU it is faster still (AMP on).
"""

from detectron2.config import LazyCall as L

from .common.data.synthetic import dataloader
from .common.models.rtdetr_tiny import model
from .common.optim import AdamW as optimizer
from .common.schedule import lr_multiplier
from .common.train import train

model.num_classes = 6
train.output_dir = "./output/rtdetr_tiny_synthetic_demo"
train.epochs = 8
train.eval_period_epochs = 4
train.checkpoint_period_epochs = 4
train.log_period = 20
train.ema.decay = 0.999
train.ema.warmups = 200
dataloader.image_size = [160, 160]
# a short schedule learns faster without the strong augmentations (zoom-out, IoU crop, colour
# distortion) and multi-scale: the stop-epoch policy turns them off from epoch 0
dataloader.train.multi_scale = [128, 160, 192]
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 2
dataloader.train.mapper.stop_strong_augmentation_epoch = 0
dataloader.test.num_workers = 2
# trained from scratch: no pretrained backbone, so the backbone learns at the base lr
optimizer.lr = 2e-4
optimizer.params.rules = [{"pattern": r"^(?:encoder|decoder)\..*(?:norm|bn|bias)", "weight_decay": 0.0}]
lr_multiplier.warmup_iters = 100
