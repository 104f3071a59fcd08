"""RT-DETR R50-m (official rtdetr_r50vd_m_6x_coco): R50 with encoder expansion 0.5, evaluated at decoder layer 3."""

from .rtdetr_r50 import model

model.encoder.expansion = 0.5
model.decoder.eval_idx = 2
