"""Parameter counts and FLOPs of an RT-DETR model (the logic of ``tools/analyze_model.py``).

Parameters are counted three ways, because the official RT-DETR figures (20 / 31 / 36 / 42 / 76 M)
count the affine weights of frozen BatchNorms, which are buffers here (and in the official code),
not ``nn.Parameter``:

* ``total``: every ``nn.Parameter`` (``sum(p.numel() for p in model.parameters())``);
* ``trainable`` / ``frozen``: split by ``requires_grad`` (``freeze_at`` freezes the backbone stem);
* ``frozen_bn_affine``: ``weight`` + ``bias`` buffers of the frozen BatchNorms (``freeze_norm``);
  ``total + frozen_bn_affine`` is the number comparable with the official counts.

FLOPs are counted with fvcore's :class:`~fvcore.nn.FlopCountAnalysis` on
``model.forward_network(x)`` in eval mode under ``torch.no_grad()`` (no pre/post-processing, no
denoising). fvcore counts **one fused multiply-add as one flop**, only for the operators it has a
handle for (convolutions, matmuls/linear, batch/layer/group norm, upsampling, ``grid_sampler``...);
every other operator (element-wise activations, additions, softmax, ...) is skipped and reported in
:attr:`ModelAnalysis.unsupported_ops`. fvcore has no handle for
``aten::scaled_dot_product_attention`` (the attention of ``nn.MultiheadAttention``); one is added
here with the same convention: ``L x S x (E + Ev)`` multiply-adds per batch and head
(``Q K^T`` and ``softmax(.) V``; the softmax itself is not counted).
"""

import dataclasses
import math
from collections import Counter
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "ParameterCounts",
    "ModelAnalysis",
    "count_parameters",
    "padded_size",
    "sdpa_flop_jit",
    "analyze_model",
    "build_model_for_analysis",
    "format_analysis",
]


@dataclasses.dataclass
class ParameterCounts:
    """Parameter counts of a model (numbers of scalars).

    Attributes:
        total: all ``nn.Parameter`` elements.
        trainable: those with ``requires_grad=True``.
        frozen: those with ``requires_grad=False``.
        frozen_bn_affine: ``weight`` + ``bias`` buffers of frozen BatchNorms (not parameters).
        by_part: per top-level child (e.g. ``backbone``, ``encoder``, ``decoder``):
            parameters + frozen-BN affine buffers of that child.
    """

    total: int
    trainable: int
    frozen: int
    frozen_bn_affine: int
    by_part: Dict[str, int]

    @property
    def total_with_frozen_bn(self) -> int:
        """``total + frozen_bn_affine``: comparable with the official parameter counts."""
        return self.total + self.frozen_bn_affine


@dataclasses.dataclass
class ModelAnalysis:
    """Result of :func:`analyze_model`.

    Attributes:
        params: the :class:`ParameterCounts`.
        input_size: (H, W) requested.
        padded_input_size: (H, W) the network ran on (padded up to ``size_divisibility``).
        flops: fvcore total (one fused multiply-add = one flop) of ``forward_network``, batch 1.
        flops_by_operator: fvcore flops per operator (e.g. ``conv``, ``linear``, ``matmul``).
        flops_by_module: fvcore flops per module name ("" is the whole model).
        unsupported_ops: operators fvcore skipped (not counted) -> number of calls.
        table: fvcore's ``flop_count_table`` (parameters and flops per module).
    """

    params: ParameterCounts
    input_size: Tuple[int, int]
    padded_input_size: Tuple[int, int]
    flops: int
    flops_by_operator: Dict[str, int]
    flops_by_module: Dict[str, int]
    unsupported_ops: Dict[str, int]
    table: str


def _frozen_bn_types() -> Tuple[type, ...]:
    from detectron2.layers import FrozenBatchNorm2d

    return (FrozenBatchNorm2d,)


def _frozen_bn_affine(module: nn.Module) -> int:
    types = _frozen_bn_types()
    n = 0
    for m in module.modules():
        if isinstance(m, types):
            n += sum(t.numel() for t in (getattr(m, "weight", None), getattr(m, "bias", None)) if t is not None)
    return n


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Count the parameters of ``model`` (shared parameters once).

    Args:
        model: any module; frozen BatchNorms are detectron2 ``FrozenBatchNorm2d`` (or subclasses).

    Returns:
        The :class:`ParameterCounts`.
    """
    params = list(model.parameters())  # de-duplicated by torch
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    by_part = {
        name: sum(p.numel() for p in child.parameters()) + _frozen_bn_affine(child)
        for name, child in model.named_children()
    }
    return ParameterCounts(
        total=total,
        trainable=trainable,
        frozen=total - trainable,
        frozen_bn_affine=_frozen_bn_affine(model),
        by_part=by_part,
    )


def padded_size(height: int, width: int, divisibility: int) -> Tuple[int, int]:
    """(H, W) rounded up to multiples of ``divisibility`` (what ``RTDETR.preprocess_image`` pads to)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"the input size must be positive, got {height}x{width}")
    d = max(int(divisibility), 1)
    return int(math.ceil(height / d) * d), int(math.ceil(width / d) * d)


def sdpa_flop_jit(inputs, outputs) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention(query, key, value, ...)``.

    Query ``[..., L, E]``, key ``[..., S, E]``, value ``[..., S, Ev]``: ``prod(...) * L * S * (E + Ev)``
    (one multiply-add = one flop, as fvcore's matmul handles).
    """
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch_and_queries = math.prod(q[:-1])
    return int(batch_and_queries * k[-2] * (q[-1] + v[-1]))


class _NetworkForward(nn.Module):
    """Holds the model's children under their own names and runs ``model.forward_network(x)``.

    fvcore traces the module it is given; this wrapper makes the traced call the network only
    (no ``Instances`` in or out) while keeping the per-module names (``backbone.res_layers.0``...)
    and the parameters of the whole model (the criterion too, uncalled).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        self._forward_network = model.forward_network  # bound method; the model is not a submodule

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self._forward_network(x)
        return out["pred_logits"], out["pred_boxes"]


def analyze_model(
    model: nn.Module,
    input_size: Sequence[int] = (640, 640),
    *,
    max_depth: int = 3,
    seed: int = 0,
) -> ModelAnalysis:
    """Count the parameters and the FLOPs of ``model.forward_network`` for one image.

    The model is put in eval mode (its training flag is restored afterwards) and run on CPU or
    wherever its parameters are, on a random batch of one normalised image.

    Args:
        model: an :class:`~neo_rtdetr.modeling.meta_arch.rtdetr.RTDETR` (anything with
            ``forward_network(x) -> {"pred_logits", "pred_boxes"}`` and ``size_divisibility``).
        input_size: (H, W) of the image; padded up to ``model.size_divisibility`` like
            ``preprocess_image`` does.
        max_depth: module depth of the returned table.
        seed: seed of the random input (the FLOPs do not depend on the values).

    Returns:
        A :class:`ModelAnalysis`.
    """
    from fvcore.nn import FlopCountAnalysis, flop_count_table

    if len(input_size) != 2:
        raise ValueError(f"input_size must be (H, W), got {tuple(input_size)}")
    h, w = int(input_size[0]), int(input_size[1])
    ph, pw = padded_size(h, w, getattr(model, "size_divisibility", 32))
    params = count_parameters(model)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, ph, pw, generator=generator).to(device)

    was_training = model.training
    model.eval()
    try:
        wrapper = _NetworkForward(model)
        with torch.no_grad():
            flops = FlopCountAnalysis(wrapper, (x,))
            flops.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            total = int(flops.total())
            by_operator = {k: int(v) for k, v in flops.by_operator().most_common()}
            by_module = {k: int(v) for k, v in flops.by_module().items()}
            unsupported = {k: int(v) for k, v in Counter(flops.unsupported_ops()).most_common()}
            table = flop_count_table(flops, max_depth=max_depth, show_param_shapes=False)
    finally:
        model.train(was_training)
    return ModelAnalysis(
        params=params,
        input_size=(h, w),
        padded_input_size=(ph, pw),
        flops=total,
        flops_by_operator=by_operator,
        flops_by_module=by_module,
        unsupported_ops=unsupported,
        table=table,
    )


def build_model_for_analysis(config_file: str, opts: Sequence[str] = ()) -> Tuple[nn.Module, Optional[Tuple[int, int]]]:
    """Instantiate ``cfg.model`` of a LazyConfig (a model config or a training config) on the CPU.

    Args:
        config_file: LazyConfig with a top-level ``model``.
        opts: ``key=value`` overrides, applied with :func:`neo_rtdetr.config.apply_overrides_strict`.

    Returns:
        (the model in eval mode, ``dataloader.image_size`` as (H, W) if the config has one, else None).
    """
    from detectron2.config import LazyConfig, instantiate

    from neo_rtdetr.config import apply_overrides_strict

    cfg = LazyConfig.load(config_file)
    if opts:
        cfg = apply_overrides_strict(cfg, list(opts))
    if "model" not in cfg:
        raise ValueError(f"{config_file} has no top-level 'model' (top-level keys: {sorted(cfg.keys())})")
    model = instantiate(cfg.model)
    if not isinstance(model, nn.Module):
        raise ValueError(f"cfg.model of {config_file} instantiates a {type(model).__name__}, not a torch module")
    size = None
    dataloader = cfg.get("dataloader", None)
    if dataloader is not None and dataloader.get("image_size", None) is not None:
        size = tuple(int(s) for s in dataloader.image_size)
    return model.cpu().eval(), size


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def format_analysis(result: ModelAnalysis, *, show_table: bool = True) -> str:
    """Human-readable report: parameter counts (exact and in millions), FLOPs, skipped operators.

    Args:
        result: from :func:`analyze_model`.
        show_table: append fvcore's per-module table.

    Returns:
        The report (several lines).
    """
    p = result.params
    lines = [
        "Parameters (nn.Parameter elements; shared ones once):",
        f"  total:            {p.total:>12d}  ({_millions(p.total)})",
        f"  trainable:        {p.trainable:>12d}  ({_millions(p.trainable)})",
        f"  frozen:           {p.frozen:>12d}  ({_millions(p.frozen)})  (requires_grad=False)",
        f"  frozen-BN affine: {p.frozen_bn_affine:>12d}  ({_millions(p.frozen_bn_affine)})  "
        "(weight+bias buffers of FrozenBatchNorm2d, not parameters)",
        f"  total + frozen-BN affine: {p.total_with_frozen_bn:d} ({_millions(p.total_with_frozen_bn)}; "
        "the official counting)",
        "  by part (with frozen-BN affine): "
        + ", ".join(f"{k} {_millions(v)}" for k, v in p.by_part.items() if v),
        "",
        f"FLOPs of forward_network, batch 1, input {result.input_size[0]}x{result.input_size[1]}"
        + (
            f" (padded to {result.padded_input_size[0]}x{result.padded_input_size[1]})"
            if result.padded_input_size != result.input_size
            else ""
        )
        + ", eval mode (fvcore: one fused multiply-add = one flop; attention by neo_rtdetr's handle):",
        f"  total: {result.flops:d} ({result.flops / 1e9:.2f} G)",
        "  by operator: " + ", ".join(f"{k} {v / 1e9:.3f} G" for k, v in result.flops_by_operator.items()),
        "  by part: "
        + ", ".join(
            f"{k} {result.flops_by_module.get(k, 0) / 1e9:.2f} G" for k in p.by_part if result.flops_by_module.get(k, 0)
        ),
    ]
    if result.unsupported_ops:
        lines.append(
            "  operators fvcore skipped (not counted; calls): "
            + ", ".join(f"{k} x{v}" for k, v in result.unsupported_ops.items())
        )
    else:
        lines.append("  operators fvcore skipped: none")
    if show_table:
        lines += ["", result.table]
    return "\n".join(lines)
