"""Optimizer parameter groups selected by regular expressions on parameter names (RT-DETR style).

The official RT-DETR solver (``src/core/yaml_config.py::get_optim_params``) builds AdamW param
groups from a list of ``{params: <regex>, lr?, weight_decay?}`` entries: a parameter belongs to an
entry when ``re.findall(regex, name)`` is non-empty, i.e. when ``re.search`` finds the pattern
anywhere in the name (the official patterns are anchored with ``^...$`` and look-aheads, so
``search`` and ``match`` agree on them). Parameters matched by no entry form a default group.
The official code asserts that entries do not overlap; here the **first matching rule wins**,
which gives the same groups for the official (disjoint) lists and a defined result otherwise.

The official regexes are kept verbatim (see :func:`rtdetr_v1_rules`), so behaviour on the official
module names (which :class:`neo_rtdetr.modeling.RTDETR` reproduces) is identical.
"""

import logging
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

from torch import nn

__all__ = [
    "build_param_groups",
    "rtdetr_v1_rules",
    "RTDETR_R50_RULES",
    "RTDETR_R18_RULES",
    "RTDETR_R101_RULES",
]

logger = logging.getLogger(__name__)

_ALLOWED_RULE_KEYS = {"pattern", "lr", "weight_decay", "name"}

# Official rtdetr_pytorch (v1) patterns, verbatim.
#: ``configs/rtdetr/include/optimizer.yml`` (R50, R50-m): backbone lr 1e-5; no weight decay on the
#: biases and norm weights of the encoder and of the decoder.
_ENCODER_BIAS_NORM = r"^(?=.*encoder(?=.*bias|.*norm.*weight)).*$"
_DECODER_BIAS_NORM = r"^(?=.*decoder(?=.*bias|.*norm.*weight)).*$"
#: ``rtdetr_r18vd_6x_coco.yml`` / ``rtdetr_r34vd_6x_coco.yml``: backbone norms (lr 1e-5, no wd),
#: other backbone params (lr 1e-5), encoder/decoder norm|bias (no wd).
_BACKBONE_NORM = r"^(?=.*backbone)(?=.*norm).*$"
_BACKBONE_NOT_NORM = r"^(?=.*backbone)(?!.*norm).*$"
_ENC_DEC_NORM_BIAS = r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bias)).*$"


def rtdetr_v1_rules(depth: int, *, backbone_lr: Optional[float] = None) -> List[Dict[str, Any]]:
    """The official rtdetr_pytorch (v1) param-group rules for a PResNet depth.

    Args:
        depth: backbone depth: 18 or 34 (R18/R34 recipe), 50 (R50 and R50-m), 101.
        backbone_lr: overrides the backbone learning rate (official: 1e-5; 1e-6 for R101).

    Returns:
        A fresh list of rule dicts for :func:`build_param_groups` (safe to mutate).
    """
    if depth in (18, 34):
        lr = 1e-5 if backbone_lr is None else backbone_lr
        return [
            {"name": "backbone_norm", "pattern": _BACKBONE_NORM, "lr": lr, "weight_decay": 0.0},
            {"name": "backbone", "pattern": _BACKBONE_NOT_NORM, "lr": lr},
            {"name": "enc_dec_norm_bias", "pattern": _ENC_DEC_NORM_BIAS, "weight_decay": 0.0},
        ]
    if depth == 50:
        lr = 1e-5 if backbone_lr is None else backbone_lr
        return [
            {"name": "backbone", "pattern": "backbone", "lr": lr},
            {"name": "encoder_bias_norm", "pattern": _ENCODER_BIAS_NORM, "weight_decay": 0.0},
            {"name": "decoder_bias_norm", "pattern": _DECODER_BIAS_NORM, "weight_decay": 0.0},
        ]
    if depth == 101:
        # The R101 config replaces the whole list: only the backbone lr changes.
        lr = 1e-6 if backbone_lr is None else backbone_lr
        return [{"name": "backbone", "pattern": "backbone", "lr": lr}]
    raise ValueError(f"rtdetr_v1_rules: no official rules for depth={depth} (use 18, 34, 50 or 101)")


#: Ready-made copies for configs (``rules=RTDETR_R50_RULES``). LazyConfig copies them on load.
RTDETR_R50_RULES = rtdetr_v1_rules(50)
RTDETR_R18_RULES = rtdetr_v1_rules(18)
RTDETR_R101_RULES = rtdetr_v1_rules(101)


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP / DataParallel prefix names with "module."; the rules are written for bare names.
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _check_rules(rules: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    checked = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, Mapping):
            raise TypeError(f"param-group rule #{i} must be a dict, got {type(rule).__name__}: {rule!r}")
        rule = dict(rule)
        unknown = set(rule) - _ALLOWED_RULE_KEYS
        if unknown:
            raise ValueError(
                f"param-group rule #{i} has unknown keys {sorted(unknown)}; "
                f"allowed: {sorted(_ALLOWED_RULE_KEYS)}"
            )
        if "pattern" not in rule or not isinstance(rule["pattern"], str):
            raise ValueError(f"param-group rule #{i} needs a string 'pattern', got {rule!r}")
        try:
            regex = re.compile(rule["pattern"])
        except re.error as e:
            raise ValueError(f"param-group rule #{i}: invalid regex {rule['pattern']!r}: {e}") from e
        checked.append(
            {
                "regex": regex,
                "name": str(rule.get("name") or f"rule{i}:{rule['pattern']}"),
                "lr": None if rule.get("lr") is None else float(rule["lr"]),
                "weight_decay": None if rule.get("weight_decay") is None else float(rule["weight_decay"]),
            }
        )
    return checked


def build_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    rules: Optional[Sequence[Mapping[str, Any]]] = None,
) -> List[Dict[str, Any]]:
    """Split the trainable parameters of ``model`` into optimizer param groups by name regexes.

    Only parameters with ``requires_grad=True`` are included (frozen ones are skipped). Each
    parameter goes to the group of the **first** rule whose ``pattern`` is found in its name by
    ``re.search``; the others go to a group named ``"default"`` with ``base_lr``/``weight_decay``.
    Empty groups are dropped (a rule matching nothing is logged as a warning: often a typo).

    Every group carries explicit ``lr`` and ``weight_decay`` (the rule's value, else the base
    value) and a ``"name"`` for logging. Torch optimizers keep such extra keys, and detectron2's
    ``LRMultiplier`` scales each group from its own ``initial_lr``, so per-group ratios (e.g.
    backbone lr = base/10) hold throughout the schedule.

    Args:
        model: the model (a DDP/DataParallel wrapper is unwrapped so names have no ``module.``).
        base_lr: learning rate of parameters whose rule sets no ``lr``.
        weight_decay: weight decay of parameters whose rule sets no ``weight_decay``.
        rules: list of dicts with keys ``pattern`` (regex, required), ``lr``, ``weight_decay``,
            ``name`` (all optional). ``None`` or empty: a single default group.

    Returns:
        A list of param-group dicts (``params``, ``lr``, ``weight_decay``, ``name``) for
        ``torch.optim.AdamW(groups, lr=base_lr, weight_decay=weight_decay, ...)``.

    Example (LazyConfig)::

        optimizer = L(torch.optim.AdamW)(
            params=L(build_param_groups)(model=None, base_lr=1e-4, weight_decay=1e-4,
                                         rules=RTDETR_R50_RULES),
            lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4)
    """
    checked = _check_rules(rules or [])
    buckets: List[List] = [[] for _ in checked]
    default: List = []
    for name, param in _unwrap(model).named_parameters():
        if not param.requires_grad:
            continue
        for i, rule in enumerate(checked):
            if rule["regex"].search(name):
                buckets[i].append((name, param))
                break
        else:
            default.append((name, param))

    groups = []
    for rule, members in zip(checked, buckets):
        if not members:
            logger.warning(f"Param-group rule '{rule['name']}' matched no trainable parameter.")
            continue
        groups.append(
            {
                "params": [p for _, p in members],
                "lr": float(base_lr) if rule["lr"] is None else rule["lr"],
                "weight_decay": float(weight_decay) if rule["weight_decay"] is None else rule["weight_decay"],
                "name": rule["name"],
            }
        )
    if default:
        groups.append(
            {
                "params": [p for _, p in default],
                "lr": float(base_lr),
                "weight_decay": float(weight_decay),
                "name": "default",
            }
        )
    if not groups:
        raise ValueError("build_param_groups: the model has no trainable parameter")

    lines = [
        f"  {g['name']}: {len(g['params'])} tensors, {sum(p.numel() for p in g['params']):,} values, "
        f"lr={g['lr']:g}, weight_decay={g['weight_decay']:g}"
        for g in groups
    ]
    logger.info("Optimizer param groups:\n" + "\n".join(lines))
    return groups
