"""RT-DETRv2-L (R50), official rtdetrv2_r50vd_6x_coco: the v1 model of the same size with the v2 decoder."""

from .....configs.common.models.rtdetr_r50 import model
from .v2_parts import to_v2

to_v2(model)
