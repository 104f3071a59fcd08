"""RT-DETRv2 criterion: the v1 :class:`RTDETRCriterion` plus the class-agnostic encoder loss.

With ``query_select_method="agnostic"`` the encoder score head has a single logit (objectness). Its top-k output
(``enc_outputs``, flagged by ``enc_meta["class_agnostic"]``) is matched and supervised as a one-class problem: every
target label is 0 (official ``RTDETRCriterionv2``). The official code matches with the original class ids, which
index its one-column cost matrix out of range for any label > 0; here matching and loss both use the one-class
targets. Everything else is the v1 criterion (loss names ``loss_{vfl,bbox,giou}[_aux_i|_enc_i|_dn_i]``).

Only the public ``RTDETRCriterion.forward`` is used (the v1 criterion's internals are free to change).
"""

from typing import Dict, Sequence

import torch
from torch import Tensor

from neo_rtdetr.modeling.criterion.rtdetr_criterion import RTDETRCriterion

__all__ = ["RTDETRCriterionV2"]


class RTDETRCriterionV2(RTDETRCriterion):
    """:class:`RTDETRCriterion` that also accepts class-agnostic encoder outputs.

    Args (keyword-only): those of :class:`RTDETRCriterion`.
    """

    def forward(self, outputs: Dict, targets: Sequence[Dict[str, Tensor]], **kwargs) -> Dict[str, Tensor]:
        """Compute all loss terms.

        Args:
            outputs: as for :meth:`RTDETRCriterion.forward`; if ``outputs["enc_meta"]["class_agnostic"]``, the
                ``enc_outputs`` (a dict or a list of dicts) have ``pred_logits`` [B, Q, 1] and ``pred_boxes``
                [B, Q, 4] and are supervised with every label 0.
            targets: per image ``labels`` int64 [n] in [0, C) and ``boxes`` [n, 4] normalised cxcywh.
            **kwargs: passed to :meth:`RTDETRCriterion.forward` (e.g. ``check_targets``).

        Returns:
            Flat dict of weighted scalar losses (the encoder terms are ``loss_*_enc_{i}`` in both modes).
        """
        meta = outputs.get("enc_meta") or {}
        if not meta.get("class_agnostic", False):
            return super().forward(outputs, targets, **kwargs)
        enc = outputs.get("enc_outputs")
        enc = [] if enc is None else ([enc] if isinstance(enc, dict) else list(enc))
        rest = {k: v for k, v in outputs.items() if k not in ("enc_outputs", "enc_meta")}
        losses = super().forward(rest, targets, **kwargs)  # validates the outputs and the targets
        if not enc:
            return losses
        bs = outputs["pred_logits"].shape[0]
        for i, o in enumerate(enc):
            logits = o.get("pred_logits")
            if logits is None or logits.dim() != 3 or logits.shape[0] != bs or logits.shape[-1] != 1:
                shape = None if logits is None else tuple(logits.shape)
                raise ValueError(
                    f"RTDETRCriterionV2: class-agnostic enc_outputs[{i}]['pred_logits'] must be [B={bs}, Q, 1], "
                    f"got {shape}"
                )
        one_class = RTDETRCriterion(
            num_classes=1, matcher=self.matcher, weight_dict=self.weight_dict, alpha=self.alpha, gamma=self.gamma
        )
        sets = {"pred_logits": enc[0]["pred_logits"], "pred_boxes": enc[0]["pred_boxes"], "aux_outputs": enc[1:]}
        zero_labels = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
        for key, value in one_class(sets, zero_labels, **kwargs).items():
            # main set -> "_enc_0", its "_aux_{i}" -> "_enc_{i + 1}"
            base, _, aux = key.partition("_aux_")
            losses[f"{base}_enc_{int(aux) + 1 if aux else 0}"] = value
        return losses
