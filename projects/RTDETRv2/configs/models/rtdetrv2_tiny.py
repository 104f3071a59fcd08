"""RT-DETRv2 tiny (not an official size; CPU tests and demo): the v1 tiny model with the v2 decoder."""

from .....configs.common.models.rtdetr_tiny import model
from .v2_parts import to_v2

to_v2(model)
