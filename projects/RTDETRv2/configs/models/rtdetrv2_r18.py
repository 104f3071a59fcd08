"""RT-DETRv2-S (R18), official rtdetrv2_r18vd_120e_coco: the v1 model of the same size with the v2 decoder."""

from .....configs.common.models.rtdetr_r18 import model
from .v2_parts import to_v2

to_v2(model)
