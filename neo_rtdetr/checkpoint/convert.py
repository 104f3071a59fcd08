"""Convert official rtdetr_pytorch / rtdetrv2_pytorch and Hugging Face RT-DETR / RT-DETRv2 weights
into neo_rtdetr checkpoints.

Our module names are the official ones, so an official state dict only needs its container
unwrapped (``ema.module`` or ``model``); a Hugging Face one is renamed with
:mod:`neo_rtdetr.checkpoint.hf_rtdetr_keys`. The result is reconciled with the target model:
BatchNorm ``num_batches_tracked`` counters are added or dropped as the model needs, the v1 / v2
names of the same Sequential children are matched (:data:`LAYOUT_ALIASES`), buffers an RT-DETRv2
decoder derives from its config are filled in when absent (:data:`DERIVED_BUFFER_KEYS`), a different
number of classes re-initialises the class-dependent tensors (said so), and anything else that does
not fit is refused with the names of the keys.
"""

import json
import logging
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from neo_rtdetr.checkpoint.hf_rtdetr_keys import convert_hf_rtdetr_state_dict

__all__ = [
    "CLASS_DEPENDENT_KEYS",
    "DERIVED_BUFFER_KEYS",
    "ANCHOR_BUFFER_KEYS",
    "LAYOUT_ALIASES",
    "unwrap_official_checkpoint",
    "load_hf_state_dict",
    "reconcile_state_dict",
    "ConversionReport",
]

logger = logging.getLogger(__name__)

#: Tensors whose first dimension is the number of classes (+1 for the denoising embedding): re-initialised by
#: :func:`reconcile_state_dict` on a class-count change, the only shape difference that
#: :mod:`neo_rtdetr.checkpoint.checkpointer`'s fit check tolerates (it imports this definition).
CLASS_DEPENDENT_KEYS = re.compile(
    r"^decoder\.(enc_score_head\.(weight|bias)|dec_score_head\.\d+\.(weight|bias)|denoising_class_embed\.weight)$"
)

#: Sequential children named by position in the official v1 layout and by name in the v2 one
#: (``HybridEncoder(version="v2")``, ``RTDETRTransformerv2``): (checkpoint-key regex, model-key replacement), tried in
#: both directions when a checkpoint key is not in the model.
LAYOUT_ALIASES: List[Tuple["re.Pattern", str]] = [
    (re.compile(r"^(encoder\.input_proj\.\d+)\.0\."), r"\1.conv."),
    (re.compile(r"^(encoder\.input_proj\.\d+)\.1\."), r"\1.norm."),
    (re.compile(r"^(decoder\.enc_output)\.0\."), r"\1.proj."),
    (re.compile(r"^(decoder\.enc_output)\.1\."), r"\1.norm."),
    (re.compile(r"^(encoder\.input_proj\.\d+)\.conv\."), r"\1.0."),
    (re.compile(r"^(encoder\.input_proj\.\d+)\.norm\."), r"\1.1."),
    (re.compile(r"^(decoder\.enc_output)\.proj\."), r"\1.0."),
    (re.compile(r"^(decoder\.enc_output)\.norm\."), r"\1.1."),
]

#: Buffers of an RT-DETRv2 decoder that are functions of its config: the anchors and valid mask of
#: ``eval_spatial_size`` and the per-point offset scale (``1 / P_l``) of each cross-attention. Absent from a
#: checkpoint (Hugging Face, official v1), they are taken from the model. ``num_points_scale`` values must equal
#: the model's: they encode the points per level, which the offset shapes alone do not reveal.
DERIVED_BUFFER_KEYS = re.compile(r"^decoder\.(anchors|valid_mask|decoder\.layers\.\d+\.cross_attn\.num_points_scale)$")

#: The derived buffers that only depend on ``eval_spatial_size`` (:data:`DERIVED_BUFFER_KEYS`' anchors and valid
#: mask): always the target model's own, whatever the checkpoint holds (another size, even a transposed one of the
#: same shape, e.g. 160 x 128 vs 128 x 160). The checkpointer's fit check ignores them too.
ANCHOR_BUFFER_KEYS = re.compile(r"^decoder\.(anchors|valid_mask)$")


def _model_key(key: str, target: Mapping[str, Tensor]) -> str:
    """``key`` itself if the model has it, else its v1/v2 alias if the model has that, else ``key``."""
    if key in target:
        return key
    for pattern, replacement in LAYOUT_ALIASES:
        if pattern.match(key):
            alias = pattern.sub(replacement, key, count=1)
            if alias in target:
                return alias
    return key


def _points_per_level(scale: Tensor) -> List[int]:
    """Points per level encoded by a ``num_points_scale`` buffer (``1 / P_l`` repeated ``P_l`` times)."""
    values, points, i = scale.detach().double().cpu().tolist(), [], 0
    while i < len(values):
        n = max(1, int(round(1.0 / values[i]))) if values[i] > 0 else 1
        points.append(n)
        i += n
    return points


def unwrap_official_checkpoint(obj: Mapping) -> Dict[str, Tensor]:
    """The model state dict inside an official rtdetr_pytorch checkpoint.

    Prefers the EMA weights (``ckpt["ema"]["module"]``, what the official evaluation uses), else
    ``ckpt["model"]``; a plain state dict is returned as is.
    """
    if "ema" in obj and isinstance(obj["ema"], Mapping) and "module" in obj["ema"]:
        return dict(obj["ema"]["module"])
    if "model" in obj and isinstance(obj["model"], Mapping):
        return dict(obj["model"])
    if all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj)
    raise ValueError(f"not an official RT-DETR checkpoint: top-level keys {sorted(obj)[:10]}")


def load_hf_state_dict(folder: str) -> Tuple[Dict[str, Tensor], Dict]:
    """Read a Hugging Face RT-DETR or RT-DETRv2 folder (config.json + model.safetensors or pytorch_model.bin).

    Returns:
        (state dict renamed to our names, the HF config as a dict).
    """
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder: no config.json")
    with open(config_file) as f:
        config = json.load(f)
    if config.get("model_type") not in (None, "rt_detr", "rt_detr_v2"):
        raise ValueError(
            f"{folder}: model_type {config.get('model_type')!r} is neither 'rt_detr' (RT-DETR) nor "
            "'rt_detr_v2' (RT-DETRv2)"
        )
    st_file, bin_file = os.path.join(folder, "model.safetensors"), os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(st_file):
        from safetensors.torch import load_file

        state = load_file(st_file)
    elif os.path.isfile(bin_file):
        state = torch.load(bin_file, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder}: neither model.safetensors nor pytorch_model.bin")
    return convert_hf_rtdetr_state_dict(state), config


class ConversionReport:
    """What :func:`reconcile_state_dict` changed: re-initialised class heads, BN counters."""

    def __init__(self):
        self.reinitialized: List[str] = []
        self.added_counters: List[str] = []
        self.dropped_counters: List[str] = []
        self.renamed: List[Tuple[str, str]] = []  # (checkpoint key, model key): v1 <-> v2 child names
        self.derived: List[str] = []  # derived v2 buffers taken from the model (absent or other values)

    def __str__(self) -> str:
        lines = []
        if self.reinitialized:
            lines.append(f"re-initialised for a different number of classes: {', '.join(self.reinitialized)}")
        if self.added_counters:
            lines.append(f"added {len(self.added_counters)} BatchNorm num_batches_tracked counters")
        if self.dropped_counters:
            lines.append(f"dropped {len(self.dropped_counters)} num_batches_tracked counters of frozen BatchNorms")
        if self.renamed:
            lines.append(
                f"matched {len(self.renamed)} keys between the v1 (.0/.1) and v2 (.conv/.norm, .proj/.norm) names"
            )
        if self.derived:
            lines.append(f"took {len(self.derived)} derived buffers from the model: {', '.join(self.derived[:4])}"
                         + (" ..." if len(self.derived) > 4 else ""))
        return "; ".join(lines) or "exact match"


def reconcile_state_dict(
    state: Dict[str, Tensor], model: nn.Module, *, allow_num_classes_change: bool = False
) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """Make ``state`` fit ``model`` exactly (zero missing and zero unexpected keys), or refuse.

    Besides ``num_batches_tracked`` counters, two layout differences are bridged: checkpoint keys are
    matched to the model's v1 or v2 child names (:data:`LAYOUT_ALIASES`), and derived RT-DETRv2
    buffers (:data:`DERIVED_BUFFER_KEYS`) missing from the checkpoint are taken from the model. The
    anchors and valid mask (:data:`ANCHOR_BUFFER_KEYS`) are always the model's; those of the
    checkpoint that differ from them (another ``eval_spatial_size``) are listed in
    ``report.derived`` like the missing ones.

    Args:
        state: a state dict with our (official) names.
        model: the target ``RTDETR``.
        allow_num_classes_change: if the checkpoint has another number of classes, take the
            model's freshly initialised class-dependent tensors (:data:`CLASS_DEPENDENT_KEYS`)
            instead of failing (fine-tuning on a dataset with other classes).

    Returns:
        (the state dict to load with ``strict=True``, a report of what changed).

    Raises:
        ValueError: naming missing keys, unexpected keys and shape mismatches.
    """
    target = model.state_dict()
    report = ConversionReport()
    out: Dict[str, Tensor] = {}
    unexpected, mismatched = [], []
    for ckpt_key, value in state.items():
        key = _model_key(ckpt_key, target)
        if key not in target:
            if key.endswith("num_batches_tracked"):
                report.dropped_counters.append(key)
                continue
            if ANCHOR_BUFFER_KEYS.match(key):  # stored anchors, but the model has no eval size: it makes its own
                report.derived.append(key)
                continue
            unexpected.append(key)
            continue
        if key != ckpt_key:
            report.renamed.append((ckpt_key, key))
        if ANCHOR_BUFFER_KEYS.match(key):  # functions of eval_spatial_size: the model's own, always
            own = target[key]
            if tuple(value.shape) != tuple(own.shape) or not torch.equal(value.to(own.device, own.dtype), own):
                report.derived.append(key)
            out[key] = own
            continue
        if tuple(value.shape) != tuple(target[key].shape):
            if allow_num_classes_change and CLASS_DEPENDENT_KEYS.match(key):
                report.reinitialized.append(key)
                out[key] = target[key]
                continue
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}")
            continue
        if key.endswith("cross_attn.num_points_scale") and not torch.allclose(
            value.double().cpu(), target[key].double().cpu(), rtol=1e-6, atol=0.0
        ):
            mismatched.append(
                f"{key}: checkpoint points per level {_points_per_level(value)} vs model "
                f"{_points_per_level(target[key])} (decoder.num_points)"
            )
            continue
        out[key] = value.to(target[key].dtype)
    missing = []
    for key, value in target.items():
        if key in out:
            continue
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(value)
            report.added_counters.append(key)
        elif DERIVED_BUFFER_KEYS.match(key):
            out[key] = value
            report.derived.append(key)
        else:
            missing.append(key)
    if unexpected or missing or mismatched:
        hint = ""
        if any(CLASS_DEPENDENT_KEYS.match(m.split(":")[0]) for m in mismatched):
            hint = " (a different number of classes: pass allow_num_classes_change / --num-classes to fine-tune)"
        raise ValueError(
            "checkpoint does not fit the model"
            + hint
            + "".join(
                f"\n  {title} ({len(keys)}): {keys[:12]}{' ...' if len(keys) > 12 else ''}"
                for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
                if keys
            )
        )
    if report.reinitialized:
        logger.warning("Class heads re-initialised (num_classes differs): %s", ", ".join(report.reinitialized))
    return out, report


# ------------------------------------------------------------------------------------------------
# End-to-end conversion (used by tools/convert_checkpoint.py)
# ------------------------------------------------------------------------------------------------

from typing import Sequence  # noqa: E402 (the end-to-end section's own import)

#: Value of ``"__author__"`` in the Detectron2 checkpoints written by :func:`save_detectron2_checkpoint`.
CONVERTER_AUTHOR = "neo_rtdetr convert_checkpoint"

__all__ += [
    "CONVERTER_AUTHOR",
    "CheckpointConversionReport",
    "build_model_from_config",
    "load_official_checkpoint_file",
    "checkpoint_num_classes",
    "check_hf_config",
    "convert_checkpoint",
    "save_detectron2_checkpoint",
    "verify_detectron2_checkpoint",
]


class CheckpointConversionReport(ConversionReport):
    """A :class:`ConversionReport` plus where the weights came from.

    Attributes:
        source: ``"official"`` or ``"hf"``.
        origin: which part of the input was used (``"ema.module"``, ``"model"``, a plain state dict,
            ``model.safetensors`` ...).
        checkpoint_num_classes: number of classes of the input weights (``None`` if unknown).
        num_classes: number of classes of the target model (and of the converted weights).
        unsafe_pickle: True when the input could only be read with ``weights_only=False``.
    """

    def __init__(self, source: str):
        super().__init__()
        self.source = source
        self.origin = ""
        self.checkpoint_num_classes: Optional[int] = None
        self.num_classes: Optional[int] = None
        self.unsafe_pickle = False

    @classmethod
    def extend(cls, base: ConversionReport, source: str) -> "CheckpointConversionReport":
        out = cls(source)
        out.reinitialized = list(base.reinitialized)
        out.added_counters = list(base.added_counters)
        out.dropped_counters = list(base.dropped_counters)
        out.renamed = list(base.renamed)
        out.derived = list(base.derived)
        return out


def build_model_from_config(config_file: str, opts: Sequence[str] = (), num_classes: Optional[int] = None) -> nn.Module:
    """Instantiate ``cfg.model`` of a LazyConfig (a model config or a full training config).

    Args:
        config_file: a ``.py``/``.yaml`` LazyConfig with a top-level ``model``.
        opts: ``key=value`` overrides (:meth:`LazyConfig.apply_overrides`), applied first.
        num_classes: if given, replaces ``model.num_classes`` (the decoder and criterion follow it
            through the configs' interpolation).

    Returns:
        the model in eval mode, on the CPU.
    """
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(config_file)
    if opts:
        cfg = LazyConfig.apply_overrides(cfg, list(opts))
    if "model" not in cfg:
        raise ValueError(f"{config_file} has no top-level 'model' (top-level keys: {sorted(cfg.keys())})")
    if num_classes is not None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        cfg.model.num_classes = int(num_classes)
    model = instantiate(cfg.model)
    if not isinstance(model, nn.Module):
        raise ValueError(f"cfg.model of {config_file} instantiates a {type(model).__name__}, not a torch module")
    return model.cpu().eval()


def load_official_checkpoint_file(path: str, *, allow_unsafe_pickle: bool = True) -> Tuple[object, bool]:
    """``torch.load`` an official rtdetr_pytorch file on the CPU, safely when possible.

    ``weights_only=True`` (tensors, containers, numbers and strings only; no code can run) is tried
    first. Official solver checkpoints may also pickle other Python objects next to the weights
    (optimizer / scheduler / scaler state, argparse namespaces ...), which the restricted
    unpickler refuses; then, if ``allow_unsafe_pickle``, the file is read again with
    ``weights_only=False``. That is full :mod:`pickle`: a crafted file can execute arbitrary code
    while it is being loaded, so this is safe **only for files from a source you trust** (e.g. the
    official release URLs). Pass ``allow_unsafe_pickle=False`` (CLI: ``--weights-only``) for other files.

    Returns:
        (the loaded object, whether the unsafe fallback was needed).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable PyTorch checkpoint (or needs the unsafe fallback and
            it is not allowed).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), False
    except Exception as safe_error:  # noqa: BLE001 - any failure: corrupt file or non-tensor objects
        first = f"{type(safe_error).__name__}: {str(safe_error).splitlines()[0] if str(safe_error) else ''}"
        if not allow_unsafe_pickle:
            raise ValueError(
                f"{path} cannot be read with torch.load(weights_only=True) ({first}). It is corrupt or holds "
                "non-tensor Python objects; if you trust its origin, allow full unpickling (drop --weights-only)"
            ) from safe_error
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint: {type(e).__name__}: {e} (weights_only=True said {first})"
        ) from e
    logger.warning(
        "%s holds non-tensor objects and was read with torch.load(weights_only=False): full pickle, "
        "which can run code; only do this with trusted files", path
    )
    return obj, True


def _official_origin(obj: Mapping) -> str:
    """Which entry :func:`unwrap_official_checkpoint` takes (same order of preference)."""
    if "ema" in obj and isinstance(obj["ema"], Mapping) and "module" in obj["ema"]:
        return "ema.module (EMA weights)"
    if "model" in obj and isinstance(obj["model"], Mapping):
        return "model"
    return "plain state dict"


def checkpoint_num_classes(state: Mapping[str, Tensor]) -> Optional[int]:
    """Number of classes of a state dict with our names (rows of the decoder / encoder score head), or None.

    The decoder head comes first: a class-agnostic RT-DETRv2 encoder head has a single row.
    """
    for key in ("decoder.dec_score_head.0.weight", "decoder.enc_score_head.weight"):
        value = state.get(key)
        if isinstance(value, Tensor) and value.dim() >= 1:
            return int(value.shape[0])
    return None


_HF_RESNET_DEPTHS = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}


def _act_name(act) -> str:
    if isinstance(act, nn.Module):
        return type(act).__name__.lower()
    return getattr(act, "__name__", str(act)).lower()


def _uniform_points(num_points):
    """An int for one count on every level (HF's ``decoder_n_points``), else the list of counts."""
    if isinstance(num_points, int):
        return num_points
    points = [int(p) for p in num_points]
    return points[0] if len(set(points)) == 1 else points


def _hf_expectations(hf_config: Mapping, model: nn.Module, check_num_labels: bool):
    """(HF config field, HF value, our value, our name) for every comparable hyper-parameter."""
    enc, dec = model.encoder, model.decoder
    enc_layer = lambda: enc.encoder[0].layers[0]  # noqa: E731
    dec_layer = lambda: dec.decoder.layers[0]  # noqa: E731
    checks = [
        ("encoder_hidden_dim", lambda: enc.hidden_dim, "encoder.hidden_dim"),
        ("encoder_in_channels", lambda: list(enc.in_channels), "encoder.in_channels"),
        ("feat_strides", lambda: list(enc.feat_strides), "encoder.feat_strides"),
        ("encode_proj_layers", lambda: list(enc.use_encoder_idx), "encoder.use_encoder_idx"),
        ("encoder_layers", lambda: enc.num_encoder_layers, "encoder.num_encoder_layers"),
        ("encoder_attention_heads", lambda: enc_layer().self_attn.num_heads, "encoder.nhead"),
        ("encoder_ffn_dim", lambda: enc_layer().linear1.out_features, "encoder.dim_feedforward"),
        ("encoder_activation_function", lambda: _act_name(enc_layer().activation), "encoder.enc_act"),
        ("activation_function", lambda: _act_name(enc.lateral_convs[0].act), "encoder.act"),
        ("positional_encoding_temperature", lambda: float(enc.pe_temperature), "encoder.pe_temperature"),
        ("d_model", lambda: dec.hidden_dim, "decoder.hidden_dim"),
        ("num_queries", lambda: dec.num_queries, "decoder.num_queries"),
        ("decoder_in_channels", lambda: list(dec.feat_channels), "decoder.feat_channels"),
        ("num_feature_levels", lambda: dec.num_levels, "decoder.num_levels"),
        ("decoder_layers", lambda: dec.num_layers, "decoder.num_layers"),
        ("decoder_attention_heads", lambda: dec.nhead, "decoder.nhead"),
        ("decoder_n_points", lambda: _uniform_points(dec_layer().cross_attn.num_points), "decoder.num_points"),
        # RT-DETRv2 fields (an RT-DETR v1 model has no such attributes: skipped, the state dict decides)
        ("decoder_n_levels", lambda: dec_layer().cross_attn.num_levels, "decoder.num_levels"),
        ("decoder_offset_scale", lambda: float(dec_layer().cross_attn.offset_scale), "decoder.offset_scale"),
        ("decoder_method", lambda: dec_layer().cross_attn.method, "decoder.cross_attn_method"),
        ("decoder_ffn_dim", lambda: dec_layer().linear1.out_features, "decoder.dim_feedforward"),
        ("decoder_activation_function", lambda: _act_name(dec_layer().activation), "decoder.activation"),
        ("learn_initial_query", lambda: bool(dec.learnt_init_query), "decoder.learnt_init_query"),
        ("layer_norm_eps", lambda: float(dec_layer().norm1.eps), "LayerNorm eps"),
    ]
    if check_num_labels:
        checks.insert(0, ("num_labels", lambda: model.num_classes, "num_classes"))
    for hf_key, ours, our_name in checks:
        if hf_key == "num_labels":
            hf_value = hf_config.get("num_labels", len(hf_config.get("id2label") or {}) or None)
        else:
            hf_value = hf_config.get(hf_key)
        if hf_value is None:
            continue
        try:
            our_value = ours()
        except (AttributeError, IndexError, TypeError):
            continue  # a model without that part: the state-dict check decides
        if isinstance(hf_value, str):
            hf_value = hf_value.lower()
        if isinstance(hf_value, tuple):
            hf_value = list(hf_value)
        if isinstance(our_value, float) or isinstance(hf_value, float):
            hf_value = float(hf_value)
        yield hf_key, hf_value, our_value, our_name


def check_hf_config(hf_config: Mapping, model: nn.Module, *, check_num_labels: bool = True) -> None:
    """Refuse a Hugging Face RT-DETR config whose architecture differs from ``model``'s.

    Compares the backbone (type and depth) and every hyper-parameter that the weights alone cannot
    reveal (heads, activations, temperature) or that they reveal only as an obscure shape error.

    Args:
        hf_config: the HF ``config.json`` as a dict.
        model: our ``RTDETR``.
        check_num_labels: compare ``num_labels`` with ``model.num_classes`` (off when the class
            heads are about to be re-initialised for another number of classes).

    Raises:
        ValueError: listing every field that disagrees, e.g. ``decoder_layers: HF 3 vs
            model 6 (decoder.num_layers)``.
    """
    problems = []
    if hf_config.get("backbone") or hf_config.get("use_timm_backbone"):
        problems.append(f"backbone: HF uses {hf_config.get('backbone')!r} (timm/other), only RT-DETR ResNet-vd is supported")
    bb = hf_config.get("backbone_config") or {}
    if isinstance(bb, Mapping) and bb:
        if bb.get("model_type", "rt_detr_resnet") != "rt_detr_resnet":
            problems.append(f"backbone_config.model_type: HF {bb.get('model_type')!r}, only 'rt_detr_resnet' is supported")
        else:
            depth = _HF_RESNET_DEPTHS.get((bb.get("layer_type"), tuple(bb.get("depths") or ())))
            our_depth = getattr(model.backbone, "depth", None)
            if depth is None:
                problems.append(f"backbone_config: unknown ResNet {bb.get('layer_type')} {bb.get('depths')}")
            elif our_depth is not None and depth != our_depth:
                problems.append(f"backbone depth: HF ResNet{depth}-vd vs model PResNet{our_depth} (backbone.depth)")
    for hf_key, hf_value, our_value, our_name in _hf_expectations(hf_config, model, check_num_labels):
        if hf_value != our_value:
            hint = " - pass --num-classes to re-initialise the class heads" if hf_key == "num_labels" else ""
            problems.append(f"{hf_key}: HF {hf_value!r} vs model {our_value!r} ({our_name}){hint}")
    if problems:
        raise ValueError(
            "the Hugging Face config does not match the model config (wrong --config-file?):\n  " + "\n  ".join(problems)
        )


def _own_storage(t: Tensor) -> Tensor:
    """``t`` itself, or a compact copy when it is a view of a larger storage (keeps files small)."""
    t = t.detach()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or not t.is_contiguous():
        return t.contiguous().clone()
    return t


def convert_checkpoint(
    source: str,
    path: str,
    model: nn.Module,
    *,
    num_classes: Optional[int] = None,
    allow_unsafe_pickle: bool = True,
) -> Tuple[Dict[str, Tensor], CheckpointConversionReport]:
    """Read official or Hugging Face RT-DETR weights and make them an exact state dict of ``model``.

    Args:
        source: ``"official"`` (an rtdetr_pytorch ``.pth``: EMA weights preferred, else ``model``,
            or a plain state dict) or ``"hf"`` (a folder with ``config.json`` and
            ``model.safetensors`` / ``pytorch_model.bin``).
        path: the file or folder.
        model: the target ``RTDETR`` (built with the wanted number of classes). On success it holds
            the converted weights (they are loaded with ``strict=True`` as the check).
        num_classes: the ``--num-classes`` the user asked for (the model must already have it). Only
            when given and different from the checkpoint's class count are the class-dependent
            tensors taken from the model's fresh initialisation (listed in ``report.reinitialized``);
            otherwise any class-count mismatch is refused.
        allow_unsafe_pickle: see :func:`load_official_checkpoint_file`.

    Returns:
        (state dict with exactly the model's keys, a :class:`CheckpointConversionReport`).

    Raises:
        FileNotFoundError / ValueError: unreadable input, an HF config that disagrees with the
            model, or keys that do not fit (named in the message).
    """
    if num_classes is not None and int(num_classes) != model.num_classes:
        raise ValueError(f"num_classes={num_classes} but the model was built with {model.num_classes} classes")
    hf_config = None
    unsafe = False
    if source == "official":
        if os.path.isdir(path):
            raise ValueError(f"--source official expects a .pth file, {path} is a folder (a Hugging Face one? use --source hf)")
        obj, unsafe = load_official_checkpoint_file(path, allow_unsafe_pickle=allow_unsafe_pickle)
        if not isinstance(obj, Mapping):
            raise ValueError(f"{path} is not an RT-DETR checkpoint: it holds a {type(obj).__name__}, not a dict")
        origin = _official_origin(obj)
        state = unwrap_official_checkpoint(obj)
        bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
        if bad or not state:
            raise ValueError(f"{path} ({origin}) is not a state dict: {'empty' if not state else f'non-tensor entries {bad[:10]}'}")
    elif source == "hf":
        if not os.path.isdir(path):
            raise ValueError(f"--source hf expects a Hugging Face model folder (config.json + weights), got {path}")
        try:
            state, hf_config = load_hf_state_dict(path)
        except KeyError as e:
            raise ValueError(f"{path}: {e.args[0] if e.args else e}") from e
        except (FileNotFoundError, ValueError):
            raise
        except Exception as e:  # noqa: BLE001 - corrupt safetensors / bin, bad JSON
            raise ValueError(f"{path}: cannot read the Hugging Face weights: {type(e).__name__}: {e}") from e
        origin = "model.safetensors" if os.path.isfile(os.path.join(path, "model.safetensors")) else "pytorch_model.bin"
    else:
        raise ValueError(f"source must be 'official' or 'hf', got {source!r}")

    ckpt_classes = checkpoint_num_classes(state)
    if hf_config is not None:
        hf_labels = hf_config.get("num_labels", len(hf_config.get("id2label") or {}) or None)
        if ckpt_classes is None:
            ckpt_classes = hf_labels
    change = num_classes is not None and ckpt_classes is not None and int(num_classes) != ckpt_classes
    if hf_config is not None:
        check_hf_config(hf_config, model, check_num_labels=not change)

    state, base = reconcile_state_dict(state, model, allow_num_classes_change=change)
    report = CheckpointConversionReport.extend(base, source)
    report.origin, report.checkpoint_num_classes, report.num_classes = origin, ckpt_classes, model.num_classes
    report.unsafe_pickle = unsafe
    state = {k: _own_storage(v) for k, v in state.items()}
    model.load_state_dict(state, strict=True)  # the verification: raises on any missing/unexpected key
    return state, report


def save_detectron2_checkpoint(
    state: Mapping[str, Tensor],
    output: str,
    *,
    source: str,
    num_classes: int,
    verify_model: Optional[nn.Module] = None,
) -> str:
    """Write ``{"model": state, "__author__", "source", "num_classes"}`` atomically.

    The file is written to a temporary file in the output folder, flushed, optionally checked with
    :func:`verify_detectron2_checkpoint` against ``verify_model``, then moved into place with
    :func:`os.replace`; on any failure the temporary file is removed and ``output`` is untouched.

    Returns:
        the absolute output path.
    """
    import tempfile

    output = os.path.abspath(output)
    if output.endswith((".pkl", ".pyth")):
        raise ValueError(f"{output}: Detectron2 reads .pkl/.pyth as Caffe2/pycls files; use a .pth name")
    folder = os.path.dirname(output)
    os.makedirs(folder, exist_ok=True)
    payload = {"model": dict(state), "__author__": CONVERTER_AUTHOR, "source": source, "num_classes": int(num_classes)}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(output) + ".", suffix=".tmp.pth")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        if verify_model is not None:
            verify_detectron2_checkpoint(tmp, verify_model, expected=state)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return output


def verify_detectron2_checkpoint(path: str, model: nn.Module, expected: Optional[Mapping[str, Tensor]] = None) -> None:
    """Load ``path`` with Detectron2's ``DetectionCheckpointer`` and require a perfect fit.

    Uses the checkpointer's own file reader and model loader (what ``DetectionCheckpointer.load``
    runs) to get the incompatible-keys result, which ``load`` only logs.

    Raises:
        ValueError: naming missing, unexpected or shape-mismatched keys, or tensors that differ from
            ``expected``.
    """
    from detectron2.checkpoint import DetectionCheckpointer

    checkpointer = DetectionCheckpointer(model)
    checkpoint = checkpointer._load_file(path)
    incompatible = checkpointer._load_model(checkpoint)
    problems = [
        (title, list(keys))
        for title, keys in (
            ("missing", incompatible.missing_keys),
            ("unexpected", incompatible.unexpected_keys),
            ("shape mismatch", [k for k, *_ in incompatible.incorrect_shapes]),
        )
        if keys
    ]
    if expected is not None:
        current = model.state_dict()
        differ = [k for k, v in expected.items() if k in current and not torch.equal(current[k], v)]
        if differ:
            problems.append(("loaded values differ", differ))
    if problems:
        raise ValueError(
            f"{path} does not load cleanly with DetectionCheckpointer:"
            + "".join(f"\n  {t} ({len(k)}): {k[:12]}" for t, k in problems)
        )
