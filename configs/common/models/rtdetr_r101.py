"""RT-DETR R101 (official rtdetr_r101vd_6x_coco): PResNet101-vd, encoder hidden 384 / FFN 2048."""

from .rtdetr_r50 import model

model.backbone.depth = 101
model.encoder.hidden_dim = 384
model.encoder.dim_feedforward = 2048
