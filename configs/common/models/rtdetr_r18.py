"""RT-DETR R18 (official rtdetr_r18vd_6x_coco): PResNet18-vd with trainable BN, expansion 0.5, 3 decoder layers."""

from .rtdetr_r50 import model

model.backbone.depth = 18
model.backbone.freeze_at = -1
model.backbone.freeze_norm = False
model.encoder.in_channels = (128, 256, 512)
model.encoder.expansion = 0.5
model.decoder.num_layers = 3
