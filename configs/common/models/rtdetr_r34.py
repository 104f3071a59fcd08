"""RT-DETR R34 (official rtdetr_r34vd_6x_coco): R18's settings with PResNet34-vd and 4 decoder layers."""

from .rtdetr_r18 import model

model.backbone.depth = 34
model.decoder.num_layers = 4
