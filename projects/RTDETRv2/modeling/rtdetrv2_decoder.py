"""RT-DETRv2 decoder: the v1 :class:`RTDETRTransformer` with the v2 cross-attention, query selection and state layout.

Built by the v1 constructor; then only what differs in v2 (official
``rtdetrv2_pytorch/src/zoo/rtdetr/rtdetrv2_decoder.py::RTDETRTransformerv2``) is changed, keeping module names and
order, so the state dict has exactly the official v2 layout:

* every decoder layer's ``cross_attn`` is a :class:`MSDeformableAttentionV2` (per-level ``num_points``, buffer
  ``num_points_scale``, ``cross_attn_method`` default / discrete); the layers are otherwise the v1 layers (post-norm,
  plus the library's fp16 clamp before ``norm3``, a no-op at normal magnitudes);
* ``enc_output`` children are named ``proj`` / ``norm`` (v1: ``0`` / ``1``); the modules themselves are reused;
* ``query_select_method="agnostic"``: the encoder score head has one output (objectness) and the top-k runs on it;
  ``"default"`` is the v1 top-k over the max class logit (both are the v1 ``max(-1)`` top-k);
* the anchors and valid mask of ``eval_spatial_size`` are persistent buffers ``anchors`` [1, S, 4] and
  ``valid_mask`` [1, S, 1] (present in official v2 checkpoints). Eval at exactly those feature sizes uses them;
  training and any other size compute fresh (cached) anchors, so the official "eval size baked in" error cannot
  happen;
* official v2 initialisation: xavier FFN weights in the decoder layers, xavier ``input_proj`` convolutions, normal
  ``denoising_class_embed`` rows (padding row zero).

The training outputs are the v1 ones (``aux_outputs``, ``enc_outputs``, ``dn_outputs``, ``dn_meta``) plus
``enc_meta = {"class_agnostic": bool}`` (official v2 key) for :class:`RTDETRCriterionV2`.
"""

import copy
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from neo_rtdetr.modeling.decoder.rtdetr_decoder import RTDETRTransformer

from .ms_deform_attn_v2 import SAMPLING_METHODS, MSDeformableAttentionV2, points_per_level

__all__ = ["RTDETRTransformerV2", "QUERY_SELECT_METHODS"]

QUERY_SELECT_METHODS = ("default", "agnostic")


class RTDETRTransformerV2(RTDETRTransformer):
    """The RT-DETRv2 decoder (v1 :class:`RTDETRTransformer` + the v2 differences listed in the module docstring).

    Args (keyword-only; every other keyword is :class:`RTDETRTransformer`'s, e.g. ``num_classes``, ``num_layers``,
    ``eval_idx``):
        num_points: sampling points per head and level: one int, or one per level (official default ``[4, 4, 4]``).
        cross_attn_method: ``"default"`` (bilinear) or ``"discrete"`` (nearest cell, for deployment fine-tunes).
        query_select_method: ``"default"`` (top-k over the max class logit) or ``"agnostic"`` (one-logit encoder
            head). The official ``"one2many"`` is not supported (no released config uses it).
        offset_scale: scale of the sampling offsets (official 0.5).
        eval_spatial_size: (H, W) of the input whose anchors are stored as buffers (official ``[640, 640]``);
            ``None`` stores none (the state dict then lacks ``decoder.anchors`` / ``decoder.valid_mask``).
    """

    def __init__(
        self,
        *,
        num_points: Union[int, Sequence[int]] = 4,
        cross_attn_method: str = "default",
        query_select_method: str = "default",
        offset_scale: float = 0.5,
        eval_spatial_size: Optional[Sequence[int]] = (640, 640),
        **kwargs,
    ):
        if cross_attn_method not in SAMPLING_METHODS:
            raise ValueError(f"cross_attn_method must be one of {SAMPLING_METHODS}, got {cross_attn_method!r}")
        if query_select_method not in QUERY_SELECT_METHODS:
            raise ValueError(
                f"query_select_method must be one of {QUERY_SELECT_METHODS}, got {query_select_method!r}"
            )
        # the v1 constructor builds v1 cross-attentions (1 point: the cheapest); they are replaced below
        super().__init__(num_points=1, **kwargs)
        self.num_points = points_per_level(num_points, self.num_levels)
        self.cross_attn_method = cross_attn_method
        self.query_select_method = query_select_method

        prototype = self.decoder.layers[0]
        prototype.cross_attn = MSDeformableAttentionV2(
            self.hidden_dim,
            self.nhead,
            self.num_levels,
            self.num_points,
            method=cross_attn_method,
            offset_scale=offset_scale,
        )
        nn.init.xavier_uniform_(prototype.linear1.weight)
        nn.init.xavier_uniform_(prototype.linear2.weight)
        # identical initial layers, as the official deep copies of one layer
        self.decoder.layers = nn.ModuleList(copy.deepcopy(prototype) for _ in range(self.num_layers))

        self.enc_output = nn.Sequential(OrderedDict([("proj", self.enc_output[0]), ("norm", self.enc_output[1])]))
        if query_select_method == "agnostic":
            self.enc_score_head = nn.Linear(self.hidden_dim, 1)
        self._reset_parameters()

        self.eval_spatial_size: Optional[Tuple[int, int]] = None
        self._eval_shapes: Optional[Tuple[Tuple[int, int], ...]] = None
        if eval_spatial_size is not None:
            size = tuple(int(s) for s in eval_spatial_size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"eval_spatial_size must be (H, W) > 0, got {list(eval_spatial_size)}")
            self.eval_spatial_size = size
            self._eval_shapes = tuple((size[0] // s, size[1] // s) for s in self.feat_strides)
            anchors, valid_mask = super()._generate_anchors(list(self._eval_shapes), dtype=torch.float32)
            # copies: load_state_dict writes into buffers in place, the anchor cache must not see that
            self.register_buffer("anchors", anchors.clone())
            self.register_buffer("valid_mask", valid_mask.clone())

    @property
    def class_agnostic(self) -> bool:
        return self.query_select_method == "agnostic"

    def _reset_parameters(self) -> None:
        """v1 initialisation plus the official v2 additions (xavier ``input_proj`` convs, normal dn embedding)."""
        super()._reset_parameters()
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
        if self.num_denoising > 0:
            nn.init.normal_(self.denoising_class_embed.weight[:-1])  # the padding row stays zero

    def _generate_anchors(
        self,
        spatial_shapes: List[Tuple[int, int]],
        grid_size: float = 0.05,
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),
    ) -> Tuple[Tensor, Tensor]:
        """The stored anchors in eval at the stored feature sizes (official v2), else fresh ones (v1, cached).

        The buffers are used only when they have the requested dtype: a half-precision copy of the model computes
        its anchors in float32 (as the v1 decoder does) instead of reading rounded buffers.

        Returns:
            anchors [1, S, 4] logits, valid_mask [1, S, 1] bool.
        """
        if (
            not self.training
            and self._eval_shapes is not None
            and tuple(tuple(int(v) for v in hw) for hw in spatial_shapes) == self._eval_shapes
            and grid_size == 0.05
            and self.anchors.dtype == dtype
        ):
            return self.anchors.to(device), self.valid_mask.to(device)
        return super()._generate_anchors(spatial_shapes, grid_size=grid_size, dtype=dtype, device=device)

    def forward(self, feats: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None) -> Dict:
        """As :meth:`RTDETRTransformer.forward`; training outputs also carry ``enc_meta``.

        Args:
            feats: L_in maps [B, C_l, H_l, W_l], finest first.
            targets: training only: per image ``labels`` [n_i] and ``boxes`` [n_i, 4] normalised cxcywh.

        Returns:
            ``pred_logits`` [B, Q, K], ``pred_boxes`` [B, Q, 4]; in training also ``aux_outputs``,
            ``enc_outputs`` (``pred_logits`` [B, Q, 1 if agnostic else K]), ``enc_meta``, ``dn_outputs``, ``dn_meta``.
        """
        out = super().forward(feats, targets)
        if "enc_outputs" in out:
            out["enc_meta"] = {"class_agnostic": self.class_agnostic}
        return out

    def extra_repr(self) -> str:
        return (
            f"num_points={list(self.num_points)}, cross_attn_method={self.cross_attn_method!r}, "
            f"query_select_method={self.query_select_method!r}, eval_spatial_size={self.eval_spatial_size}"
        )
