"""RT-DETR decoder (``RTDETRTransformer``), a reimplementation of the official rtdetr_pytorch (v1) decoder.

Module and parameter names equal the official ones (``input_proj.{i}.conv/norm``, ``decoder.layers.{i}.*``,
``denoising_class_embed``, ``query_pos_head``, ``enc_output``, ``enc_score_head``, ``enc_bbox_head``,
``dec_score_head.{i}``, ``dec_bbox_head.{i}``), so official ``decoder.*`` weights load unchanged.

Differences from the official code (none changes the outputs of a trained model at the official settings):

* no ``eval_spatial_size``: anchors and the valid mask are computed for the actual feature sizes and cached per
  (sizes, device, dtype), so any input size works in eval;
* a training batch without boxes still runs the denoising branch (one dummy group, see ``denoising.py``);
* the encoder top-k outputs are returned as ``enc_outputs`` and the denoising outputs as ``dn_outputs`` (the
  official code appends the former to ``aux_outputs`` and names the latter ``dn_aux_outputs``);
* ``dn_outputs``/``dn_meta`` are returned whenever denoising ran (official: only when ``aux_loss``).
"""

import copy
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..layers.box_ops import inverse_sigmoid
from ..layers.compiled_function import compiled_function
from ..layers.mlp import MLP
from ..layers.tracing import is_graph_capture
from .denoising import get_contrastive_denoising_training_group
from .ms_deform_attn import MSDeformableAttention

__all__ = ["RTDETRTransformer", "TransformerDecoder", "TransformerDecoderLayer", "bias_init_with_prob"]

_FP16_MAX = 65504.0


def bias_init_with_prob(prior_prob: float = 0.01) -> float:
    """Bias of a sigmoid classifier whose initial output probability is ``prior_prob``."""
    return float(-math.log((1 - prior_prob) / prior_prob))


class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention -> deformable cross-attention -> FFN.

    Parameters (official names): ``self_attn`` (``nn.MultiheadAttention``, batch-first), ``norm1``,
    ``cross_attn`` (``MSDeformableAttention``), ``norm2``, ``linear1``, ``linear2``, ``norm3``.

    Args:
        d_model: C.
        n_head: attention heads (self and cross).
        dim_feedforward: FFN hidden width.
        dropout: dropout of attention and the residual branches.
        activation: FFN activation, a ``torch.nn.functional`` name.
        n_levels: feature levels of the cross-attention.
        n_points: sampling points per head and level.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_head: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        activation: str = "relu",
        n_levels: int = 3,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)

        self.cross_attn = MSDeformableAttention(d_model, n_head, n_levels, n_points)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = getattr(F, activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    @staticmethod
    def with_pos_embed(tensor: Tensor, pos: Optional[Tensor]) -> Tensor:
        return tensor if pos is None else tensor + pos

    def forward_ffn(self, tgt: Tensor) -> Tensor:
        return self.linear2(self.dropout3(self.activation(self.linear1(tgt))))

    def forward(
        self,
        tgt: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        memory_spatial_shapes: List[Tuple[int, int]],
        attn_mask: Optional[Tensor] = None,
        memory_mask: Optional[Tensor] = None,
        query_pos_embed: Optional[Tensor] = None,
    ) -> Tensor:
        """One decoder layer.

        Args:
            tgt: [B, N, C] queries.
            reference_points: [B, N, 1, 4] reference boxes (cxcywh in [0, 1]).
            memory: [B, S, C] flattened multi-level features.
            memory_spatial_shapes: (H_l, W_l) per level.
            attn_mask: optional [N, N] self-attention mask, bool with True = blocked (a float additive mask is
                cast to ``tgt``'s dtype).
            memory_mask: optional [B, S] valid-token mask of the cross-attention (True = valid).
            query_pos_embed: optional [B, N, C] positional embedding added to queries and keys.

        Returns:
            [B, N, C].
        """
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(tgt.dtype)
        q = k = self.with_pos_embed(tgt, query_pos_embed)
        tgt2, _ = self.self_attn(q, k, value=tgt, attn_mask=attn_mask, need_weights=False)
        tgt = self.norm1(tgt + self.dropout1(tgt2))

        tgt2 = self.cross_attn(
            self.with_pos_embed(tgt, query_pos_embed), reference_points, memory, memory_spatial_shapes, memory_mask
        )
        tgt = self.norm2(tgt + self.dropout2(tgt2))

        tgt = tgt + self.dropout4(self.forward_ffn(tgt))
        # official v1 (PR #464): clamp before the last norm against fp16 overflow; a no-op at normal magnitudes
        return self.norm3(tgt.clamp(min=-_FP16_MAX, max=_FP16_MAX))


class TransformerDecoder(nn.Module):
    """A stack of decoder layers with iterative box refinement (official ``TransformerDecoder``).

    Args:
        hidden_dim: C.
        decoder_layer: the layer to copy ``num_layers`` times.
        num_layers: L.
        eval_idx: the layer whose output eval returns (negative counts from the end; eval stops there).
    """

    def __init__(self, hidden_dim: int, decoder_layer: nn.Module, num_layers: int, eval_idx: int = -1):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(decoder_layer) for _ in range(num_layers)])
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx
        if not 0 <= self.eval_idx < num_layers:
            raise ValueError(f"eval_idx {eval_idx} out of range for {num_layers} layers")

    def forward(
        self,
        tgt: Tensor,
        ref_points_unact: Tensor,
        memory: Tensor,
        memory_spatial_shapes: List[Tuple[int, int]],
        bbox_head: nn.ModuleList,
        score_head: nn.ModuleList,
        query_pos_head: nn.Module,
        attn_mask: Optional[Tensor] = None,
        memory_mask: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Run the layers; every layer refines the boxes of the previous one.

        Training: returns all L layers. Layer i > 0's boxes are computed from the *undetached* layer-(i-1) boxes
        ("look forward twice"), while the reference fed to the next layer is detached. Eval: stops at
        ``eval_idx`` and returns that layer only.

        Args:
            tgt: [B, N, C] initial queries.
            ref_points_unact: [B, N, 4] initial reference boxes as logits.
            memory: [B, S, C].
            memory_spatial_shapes: (H_l, W_l) per level.
            bbox_head: L box MLPs (C -> 4, logit deltas).
            score_head: L class Linear heads.
            query_pos_head: MLP 4 -> C for the positional embedding of the reference boxes.
            attn_mask: optional [N, N] bool self-attention mask (True = blocked).
            memory_mask: optional [B, S] (True = valid).

        Returns:
            (boxes [L', B, N, 4] sigmoid cxcywh, logits [L', B, N, num_classes]); L' = L in training, 1 in eval.
        """
        output = tgt
        dec_out_bboxes, dec_out_logits = [], []
        ref_points = None
        ref_points_detach = torch.sigmoid(ref_points_unact)
        for i, layer in enumerate(self.layers):
            ref_points_input = ref_points_detach.unsqueeze(2)  # [B, N, 1, 4]
            # the box chain stays in >= float32; the embedding follows the query dtype (a no-op unless the
            # model itself is half precision)
            query_pos_embed = query_pos_head(ref_points_detach.to(output.dtype))
            output = layer(
                output, ref_points_input, memory, memory_spatial_shapes, attn_mask, memory_mask, query_pos_embed
            )
            inter_ref_bbox = torch.sigmoid(bbox_head[i](output) + inverse_sigmoid(ref_points_detach))

            if self.training:
                dec_out_logits.append(score_head[i](output))
                if i == 0:
                    dec_out_bboxes.append(inter_ref_bbox)
                else:
                    dec_out_bboxes.append(torch.sigmoid(bbox_head[i](output) + inverse_sigmoid(ref_points)))
            elif i == self.eval_idx:
                dec_out_logits.append(score_head[i](output))
                dec_out_bboxes.append(inter_ref_bbox)
                break

            ref_points = inter_ref_bbox
            ref_points_detach = inter_ref_bbox.detach() if self.training else inter_ref_bbox

        return torch.stack(dec_out_bboxes), torch.stack(dec_out_logits)


class RTDETRTransformer(nn.Module):
    """The RT-DETR decoder: input projection, IoU-aware query selection, CDN and the refinement decoder.

    Args (keyword-only):
        num_classes: real classes (sigmoid classification, no background).
        hidden_dim: C.
        num_queries: Q, queries selected from the encoder memory.
        feat_channels: channels of the input feature maps (one per input level).
        feat_strides: strides of the input feature maps (informational; extended by x2 for extra levels).
        num_levels: levels of the memory (> len(feat_channels) adds 3x3 stride-2 conv levels).
        num_points: sampling points per head and level.
        nhead: attention heads.
        num_layers: decoder layers L.
        dim_feedforward: FFN width.
        dropout: dropout of the decoder layers.
        activation: FFN activation (``torch.nn.functional`` name).
        num_denoising: CDN query budget (0 disables denoising).
        label_noise_ratio: CDN label noise ratio.
        box_noise_scale: CDN box noise scale.
        learnt_init_query: use a learnt content query (``tgt_embed``) instead of the selected memory features.
        eval_idx: decoder layer whose output is returned in eval (R50-m: 2); -1 = last.
        eps: anchors closer than ``eps`` to the border are invalid (masked).
        aux_loss: return ``aux_outputs`` and ``enc_outputs`` in training.
    """

    _ANCHOR_CACHE_SIZE = 16

    def __init__(
        self,
        *,
        num_classes: int = 80,
        hidden_dim: int = 256,
        num_queries: int = 300,
        feat_channels: Sequence[int] = (256, 256, 256),
        feat_strides: Sequence[int] = (8, 16, 32),
        num_levels: int = 3,
        num_points: int = 4,
        nhead: int = 8,
        num_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        activation: str = "relu",
        num_denoising: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
        learnt_init_query: bool = False,
        eval_idx: int = -1,
        eps: float = 1e-2,
        aux_loss: bool = True,
    ):
        super().__init__()
        feat_channels = list(feat_channels)
        feat_strides = list(feat_strides)
        if len(feat_channels) > num_levels:
            raise ValueError(f"{len(feat_channels)} input levels but num_levels={num_levels}")
        if len(feat_strides) != len(feat_channels):
            raise ValueError("feat_strides and feat_channels must have the same length")
        for _ in range(num_levels - len(feat_strides)):
            feat_strides.append(feat_strides[-1] * 2)

        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.feat_channels = feat_channels
        self.feat_strides = feat_strides
        self.num_levels = num_levels
        self.nhead = nhead
        self.num_layers = num_layers
        self.eps = eps
        self.aux_loss = aux_loss
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.learnt_init_query = learnt_init_query
        #: pad the denoising queries to a multiple of 2 * num_denoising (one shape for a compiled decoder while no
        #: image has more than num_denoising boxes, a larger multiple above; the outputs of the real queries are
        #: unchanged, see get_contrastive_denoising_training_group)
        self.static_denoising_size = False
        self._body_compile_kwargs: Optional[Dict] = None

        self._build_input_proj_layer(feat_channels)

        decoder_layer = TransformerDecoderLayer(
            hidden_dim, nhead, dim_feedforward, dropout, activation, num_levels, num_points
        )
        self.decoder = TransformerDecoder(hidden_dim, decoder_layer, num_layers, eval_idx)

        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)

        if learnt_init_query:
            self.tgt_embed = nn.Embedding(num_queries, hidden_dim)
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, num_layers=2)

        self.enc_output = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, num_layers=3)

        self.dec_score_head = nn.ModuleList([nn.Linear(hidden_dim, num_classes) for _ in range(num_layers)])
        self.dec_bbox_head = nn.ModuleList([MLP(hidden_dim, hidden_dim, 4, num_layers=3) for _ in range(num_layers)])

        # (spatial shapes, device, dtype) -> (anchors [1, S, 4], valid_mask [1, S, 1]); not part of the state dict
        self._anchor_cache: "OrderedDict[tuple, Tuple[Tensor, Tensor]]" = OrderedDict()
        self._reset_parameters()

    @property
    def eval_idx(self) -> int:
        return self.decoder.eval_idx

    def _reset_parameters(self) -> None:
        bias = bias_init_with_prob(0.01)
        nn.init.constant_(self.enc_score_head.bias, bias)
        nn.init.constant_(self.enc_bbox_head.layers[-1].weight, 0)
        nn.init.constant_(self.enc_bbox_head.layers[-1].bias, 0)
        for cls_head, box_head in zip(self.dec_score_head, self.dec_bbox_head):
            nn.init.constant_(cls_head.bias, bias)
            nn.init.constant_(box_head.layers[-1].weight, 0)
            nn.init.constant_(box_head.layers[-1].bias, 0)
        nn.init.xavier_uniform_(self.enc_output[0].weight)
        if self.learnt_init_query:
            nn.init.xavier_uniform_(self.tgt_embed.weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)

    def _build_input_proj_layer(self, feat_channels: List[int]) -> None:
        self.input_proj = nn.ModuleList()
        for in_channels in feat_channels:
            self.input_proj.append(
                nn.Sequential(
                    OrderedDict(
                        [
                            ("conv", nn.Conv2d(in_channels, self.hidden_dim, 1, bias=False)),
                            ("norm", nn.BatchNorm2d(self.hidden_dim)),
                        ]
                    )
                )
            )
        in_channels = feat_channels[-1]
        for _ in range(self.num_levels - len(feat_channels)):
            self.input_proj.append(
                nn.Sequential(
                    OrderedDict(
                        [
                            ("conv", nn.Conv2d(in_channels, self.hidden_dim, 3, 2, padding=1, bias=False)),
                            ("norm", nn.BatchNorm2d(self.hidden_dim)),
                        ]
                    )
                )
            )
            in_channels = self.hidden_dim

    # ------------------------------------------------------------------------------------------------ inputs
    def _get_encoder_input(self, feats: List[Tensor]) -> Tuple[Tensor, List[Tuple[int, int]]]:
        """Project and flatten the feature maps: -> memory [B, S, C], spatial shapes [(H_l, W_l)]."""
        proj_feats = [self.input_proj[i](feat) for i, feat in enumerate(feats)]
        num_inputs = len(proj_feats)
        for i in range(num_inputs, self.num_levels):
            src = feats[-1] if i == num_inputs else proj_feats[-1]
            proj_feats.append(self.input_proj[i](src))
        flat, shapes = [], []
        for feat in proj_feats:
            h, w = feat.shape[-2:]
            flat.append(feat.flatten(2).permute(0, 2, 1))  # [B, C, H, W] -> [B, H*W, C]
            shapes.append((int(h), int(w)))
        return torch.cat(flat, 1), shapes

    def _generate_anchors(
        self,
        spatial_shapes: List[Tuple[int, int]],
        grid_size: float = 0.05,
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),
    ) -> Tuple[Tensor, Tensor]:
        """Anchor boxes (as logits) and their valid mask for the given feature sizes (cached, except while a graph is
        captured for export).

        Level l, cell (y, x) of an (H, W) map: centre ((x + 0.5) / W, (y + 0.5) / H), size 0.05 * 2^l. Anchors
        with any coordinate outside (eps, 1 - eps) are invalid and set to +inf (official).

        Returns:
            anchors [1, S, 4] logits (``dtype``), valid_mask [1, S, 1] bool.
        """
        # while a graph is captured (ONNX export, torch.export, jit.trace) the anchors are built in the graph (the
        # exporters fold them into a constant) and the cache is neither read nor written: torch.export traces with
        # fake tensors, which must not leak into later eager calls. Same computation, same values.
        capture = is_graph_capture()
        key = (tuple(spatial_shapes), torch.device(device), dtype, float(grid_size), float(self.eps))
        cached = None if capture else self._anchor_cache.get(key)
        if cached is not None:
            self._anchor_cache.move_to_end(key)
            return cached
        anchors = []
        for lvl, (h, w) in enumerate(spatial_shapes):
            grid_y, grid_x = torch.meshgrid(
                torch.arange(h, dtype=dtype, device=device), torch.arange(w, dtype=dtype, device=device), indexing="ij"
            )
            grid_xy = torch.stack([grid_x, grid_y], -1)
            grid_xy = (grid_xy + 0.5) / torch.tensor([w, h], dtype=dtype, device=device)
            wh = torch.ones_like(grid_xy) * (grid_size * (2.0**lvl))
            anchors.append(torch.cat([grid_xy, wh], -1).reshape(h * w, 4))
        anchors = torch.cat(anchors, 0).unsqueeze(0)
        valid_mask = ((anchors > self.eps) & (anchors < 1 - self.eps)).all(-1, keepdim=True)
        anchors = torch.log(anchors / (1 - anchors))
        anchors = torch.where(valid_mask, anchors, torch.full_like(anchors, float("inf")))
        if capture:
            return anchors, valid_mask
        self._anchor_cache[key] = (anchors, valid_mask)
        while len(self._anchor_cache) > self._ANCHOR_CACHE_SIZE:
            self._anchor_cache.popitem(last=False)
        return anchors, valid_mask

    def _get_decoder_input(
        self,
        memory: Tensor,
        anchors_and_mask: Tuple[Tensor, Tensor],
        denoising_class: Optional[Tensor] = None,
        denoising_bbox_unact: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """IoU-aware query selection (top-k over the max class logit of the encoder head).

        ``anchors_and_mask``: the :meth:`_generate_anchors` result for the memory's spatial shapes.

        Returns:
            target [B, Ndn+Q, C] (content queries, detached unless learnt), ref_unact [B, Ndn+Q, 4] (detached),
            enc_topk_bboxes [B, Q, 4], enc_topk_logits [B, Q, num_classes] (not detached).
        """
        bs, num_tokens, _ = memory.shape
        if num_tokens < self.num_queries:
            raise ValueError(f"memory has {num_tokens} tokens, fewer than num_queries={self.num_queries}")
        anchors, valid_mask = anchors_and_mask

        output_memory = self.enc_output(valid_mask.to(memory.dtype) * memory)
        enc_outputs_class = self.enc_score_head(output_memory)  # [B, S, K]
        enc_outputs_coord_unact = self.enc_bbox_head(output_memory) + anchors  # [B, S, 4]

        _, topk_ind = torch.topk(enc_outputs_class.max(-1).values, self.num_queries, dim=1)  # [B, Q]
        reference_points_unact = enc_outputs_coord_unact.gather(
            1, topk_ind.unsqueeze(-1).expand(-1, -1, enc_outputs_coord_unact.shape[-1])
        )
        enc_topk_bboxes = torch.sigmoid(reference_points_unact)
        enc_topk_logits = enc_outputs_class.gather(
            1, topk_ind.unsqueeze(-1).expand(-1, -1, enc_outputs_class.shape[-1])
        )

        if self.learnt_init_query:
            target = self.tgt_embed.weight.unsqueeze(0).tile([bs, 1, 1])
        else:
            target = output_memory.gather(1, topk_ind.unsqueeze(-1).expand(-1, -1, output_memory.shape[-1]))
            target = target.detach()

        if denoising_bbox_unact is not None:
            reference_points_unact = torch.cat(
                [denoising_bbox_unact.to(reference_points_unact.dtype), reference_points_unact], 1
            )
        if denoising_class is not None:
            target = torch.cat([denoising_class.to(target.dtype), target], 1)
        return target, reference_points_unact.detach(), enc_topk_bboxes, enc_topk_logits

    def _check_feats(self, feats: Sequence[Tensor]) -> None:
        if not isinstance(feats, (list, tuple)) or len(feats) != len(self.feat_channels):
            raise ValueError(f"feats must be a list of {len(self.feat_channels)} feature maps [B, C_l, H_l, W_l]")
        bs = feats[0].shape[0] if feats[0].dim() == 4 else None
        for i, (feat, ch) in enumerate(zip(feats, self.feat_channels)):
            if feat.dim() != 4 or feat.shape[0] != bs or feat.shape[1] != ch:
                raise ValueError(f"feats[{i}] must be [B={bs}, {ch}, H, W], got {tuple(feat.shape)}")

    # ------------------------------------------------------------------------------------------------- body
    def _memory_spatial_shapes(self, feats: Sequence[Tensor]) -> List[Tuple[int, int]]:
        """(H_l, W_l) of every memory level: the input maps' sizes, then the 3x3 stride-2 convolutions' (extra
        levels)."""
        shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        for _ in range(len(feats), self.num_levels):
            h, w = shapes[-1]
            shapes.append(((h - 1) // 2 + 1, (w - 1) // 2 + 1))
        return shapes

    def _forward_body(
        self,
        feats: List[Tensor],
        anchors_and_mask: Tuple[Tensor, Tensor],
        denoising_class: Optional[Tensor],
        denoising_bbox_unact: Optional[Tensor],
        attn_mask: Optional[Tensor],
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Everything of :meth:`forward` that is tensor computation (what :meth:`compile_body` compiles).

        The anchors come from the caller (cached per size in eager code: a cache read inside a compiled function
        would make its first and later calls different graphs).

        Args:
            feats: the input maps [B, C_l, H_l, W_l].
            anchors_and_mask: :meth:`_generate_anchors` of the memory's spatial shapes ([1, S, 4], [1, S, 1]).
            denoising_class / denoising_bbox_unact: [B, Ndn, C] / [B, Ndn, 4] denoising queries, or None.
            attn_mask: [Ndn + Q, Ndn + Q] bool (True = blocked), or None.

        Returns:
            boxes [L', B, Ndn + Q, 4], logits [L', B, Ndn + Q, K] of the decoder layers (L' = L in training, 1 in
            eval), and the encoder top-k boxes [B, Q, 4] and logits [B, Q, K_enc].
        """
        memory, spatial_shapes = self._get_encoder_input(feats)
        if anchors_and_mask[0].shape[1] != memory.shape[1]:
            raise ValueError(f"anchors for {anchors_and_mask[0].shape[1]} tokens, memory has {memory.shape[1]}")
        target, init_ref_points_unact, enc_topk_bboxes, enc_topk_logits = self._get_decoder_input(
            memory, anchors_and_mask, denoising_class, denoising_bbox_unact
        )
        out_bboxes, out_logits = self.decoder(
            target,
            init_ref_points_unact,
            memory,
            spatial_shapes,
            self.dec_bbox_head,
            self.dec_score_head,
            self.query_pos_head,
            attn_mask=attn_mask,
        )
        return out_bboxes, out_logits, enc_topk_bboxes, enc_topk_logits

    def compile_body(self, **compile_kwargs) -> None:
        """Run the decoder's computation (:meth:`_forward_body`) through ``torch.compile`` from now on.

        The denoising groups are still drawn eagerly (same random stream as the eager model) and padded to a fixed
        query count (``static_denoising_size``), so training compiles one graph per input size instead of one per
        box count. Only the arguments are stored on the module (deep-copy safe, see
        :func:`~neo_rtdetr.modeling.layers.compiled_function.compiled_function`).

        Args:
            compile_kwargs: ``torch.compile`` keyword arguments (e.g. ``mode``; default ``dynamic=False``).
        """
        self._body_compile_kwargs = {"dynamic": False, **compile_kwargs}
        self.static_denoising_size = True

    def _body(self):
        return compiled_function(type(self)._forward_body, self._body_compile_kwargs)

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, feats: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None) -> Dict:
        """Decode the encoder feature maps into boxes and class logits.

        Args:
            feats: L_in feature maps [B, C_l, H_l, W_l] (C_l = ``feat_channels[l]``), finest first.
            targets: training only (needed when ``num_denoising > 0``): per image ``labels`` LongTensor [n_i]
                and ``boxes`` [n_i, 4] normalised cxcywh.

        Returns:
            dict with ``pred_logits`` [B, Q, num_classes] (pre-sigmoid) and ``pred_boxes`` [B, Q, 4] (sigmoid,
            normalised cxcywh) of the last layer (eval: of layer ``eval_idx``). In training additionally:

            * ``aux_outputs`` (if ``aux_loss``): list of L-1 dicts (``pred_logits``, ``pred_boxes``) of layers
              0..L-2 (matching queries only);
            * ``enc_outputs`` (if ``aux_loss``): dict ``pred_logits`` [B, Q, K], ``pred_boxes`` [B, Q, 4] of the
              encoder top-k selection (not detached);
            * ``dn_outputs`` (if ``num_denoising > 0``): list of L dicts for the Ndn denoising queries
              ([B, Ndn, K], [B, Ndn, 4]);
            * ``dn_meta`` (if ``num_denoising > 0``): ``dn_positive_idx`` (list of B LongTensors),
              ``dn_num_group`` (int), ``dn_num_split`` ([Ndn, Q]).
        """
        self._check_feats(feats)
        bs = feats[0].shape[0]

        use_dn = self.training and self.num_denoising > 0
        if use_dn:
            if targets is None or len(targets) != bs:
                raise ValueError(f"training with denoising needs one target dict per image ({bs})")
            denoising_class, denoising_bbox_unact, attn_mask, dn_meta = get_contrastive_denoising_training_group(
                targets,
                self.num_classes,
                self.num_queries,
                self.denoising_class_embed,
                num_denoising=self.num_denoising,
                label_noise_ratio=self.label_noise_ratio,
                box_noise_scale=self.box_noise_scale,
                pad_multiple=2 * self.num_denoising if self.static_denoising_size else None,
            )
        else:
            denoising_class = denoising_bbox_unact = attn_mask = dn_meta = None

        # anchors in float32 at least (official: float32 anchors added to the (possibly autocast) head output)
        anchors_and_mask = self._generate_anchors(
            self._memory_spatial_shapes(feats),
            dtype=torch.promote_types(feats[0].dtype, torch.float32),
            device=feats[0].device,
        )
        out_bboxes, out_logits, enc_topk_bboxes, enc_topk_logits = self._body()(
            self, list(feats), anchors_and_mask, denoising_class, denoising_bbox_unact, attn_mask
        )

        if dn_meta is not None:
            num_dn, num_dn_padded = dn_meta["dn_num_split"][0], denoising_class.shape[1]
            dn_out_bboxes, out_bboxes = out_bboxes[:, :, :num_dn], out_bboxes[:, :, num_dn_padded:]
            dn_out_logits, out_logits = out_logits[:, :, :num_dn], out_logits[:, :, num_dn_padded:]

        out = {"pred_logits": out_logits[-1], "pred_boxes": out_bboxes[-1]}
        if self.training:
            if self.aux_loss:
                out["aux_outputs"] = self._set_aux_loss(out_logits[:-1], out_bboxes[:-1])
                out["enc_outputs"] = {"pred_logits": enc_topk_logits, "pred_boxes": enc_topk_bboxes}
            if dn_meta is not None:
                out["dn_outputs"] = self._set_aux_loss(dn_out_logits, dn_out_bboxes)
                out["dn_meta"] = dn_meta
        return out

    @staticmethod
    def _set_aux_loss(outputs_class: Sequence[Tensor], outputs_coord: Sequence[Tensor]) -> List[Dict[str, Tensor]]:
        return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class, outputs_coord)]
