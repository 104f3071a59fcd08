"""RT-DETRv2-M (R50-m, evaluated at decoder layer 3), official rtdetrv2_r50vd_m_7x_coco: the v1 model of the same
size with the v2 decoder."""

from .....configs.common.models.rtdetr_r50m import model
from .v2_parts import to_v2

to_v2(model)
