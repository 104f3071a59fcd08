"""The v1 :class:`HybridEncoder` with the official v2 input-projection names.

The official v2 ``HybridEncoder`` (``version="v2"``, the default of every released v2 config) names the children
of ``input_proj.{i}`` ``conv`` / ``norm`` instead of v1's ``0`` / ``1``; nothing else differs.
"""

from collections import OrderedDict

from torch import nn

from neo_rtdetr.modeling.encoder.hybrid_encoder import HybridEncoder

__all__ = ["HybridEncoderV2"]


class HybridEncoderV2(HybridEncoder):
    """:class:`HybridEncoder` whose state dict has ``input_proj.{i}.conv.*`` / ``input_proj.{i}.norm.*``.

    Args (keyword-only): those of :class:`HybridEncoder`.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # same modules, renamed (forward indexes them by position, which a named Sequential also supports)
        self.input_proj = nn.ModuleList(
            nn.Sequential(OrderedDict([("conv", proj[0]), ("norm", proj[1])])) for proj in self.input_proj
        )
