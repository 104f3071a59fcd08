"""Turns a v1 model config into its RT-DETRv2 version (official ``rtdetrv2_r50vd.yml`` defaults).

Not a model config itself: the size configs next to it call :func:`to_v2` on the v1 model of the same size
(``configs/common/models/rtdetr_*.py``), so backbone, encoder and decoder sizes are written once, in the library.
"""

from projects.RTDETRv2.modeling import HybridEncoderV2, RTDETRCriterionV2, RTDETRTransformerV2


def to_v2(model):
    """Swap in the v2 encoder names, decoder and criterion; set the v2 decoder options to the official defaults.

    Args:
        model: a v1 ``L(RTDETR)(...)`` config (changed in place).

    Returns:
        ``model``.
    """
    model.encoder._target_ = HybridEncoderV2  # input_proj.{i}.conv / .norm
    model.decoder._target_ = RTDETRTransformerV2
    model.decoder.num_points = [4, 4, 4]
    model.decoder.cross_attn_method = "default"  # "discrete": the deployment fine-tunes (rtdetrv2_*_dsp_*)
    model.decoder.query_select_method = "default"  # or "agnostic"
    model.decoder.offset_scale = 0.5
    model.decoder.eval_spatial_size = [640, 640]  # stored anchors (official checkpoints have them for 640 x 640)
    model.criterion._target_ = RTDETRCriterionV2
    return model
