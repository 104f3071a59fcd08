"""RT-DETR R50 (official rtdetr_r50vd_6x_coco): PResNet50-vd, HybridEncoder (expansion 1.0), 6 decoder layers.

Other sizes import this model and change only what differs. ``num_classes`` is set once on the
model and reaches the decoder and the criterion by interpolation.
"""

from detectron2.config import LazyCall as L

from neo_rtdetr.modeling.backbone.presnet import PResNet
from neo_rtdetr.modeling.criterion import HungarianMatcher, RTDETRCriterion
from neo_rtdetr.modeling.decoder.rtdetr_decoder import RTDETRTransformer
from neo_rtdetr.modeling.encoder.hybrid_encoder import HybridEncoder
from neo_rtdetr.modeling.meta_arch.rtdetr import RTDETR

model = L(RTDETR)(
    backbone=L(PResNet)(depth=50, variant="d", return_idx=(1, 2, 3), freeze_at=0, freeze_norm=True),
    encoder=L(HybridEncoder)(
        in_channels=(512, 1024, 2048),
        feat_strides=(8, 16, 32),
        hidden_dim=256,
        nhead=8,
        dim_feedforward=1024,
        dropout=0.0,
        enc_act="gelu",
        use_encoder_idx=(2,),
        num_encoder_layers=1,
        pe_temperature=10000,
        expansion=1.0,
        depth_mult=1.0,
        act="silu",
    ),
    decoder=L(RTDETRTransformer)(
        num_classes="${..num_classes}",
        hidden_dim=256,
        num_queries=300,
        feat_channels=("${...encoder.hidden_dim}",) * 3,
        feat_strides=(8, 16, 32),
        num_levels=3,
        num_points=4,
        nhead=8,
        num_layers=6,
        dim_feedforward=1024,
        dropout=0.0,
        activation="relu",
        num_denoising=100,
        label_noise_ratio=0.5,
        box_noise_scale=1.0,
        learnt_init_query=False,
        eval_idx=-1,
    ),
    criterion=L(RTDETRCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25, gamma=2.0),
        weight_dict={"loss_vfl": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        alpha=0.75,
        gamma=2.0,
    ),
    num_classes=80,
    pixel_mean=(0.0, 0.0, 0.0),
    pixel_std=(255.0, 255.0, 255.0),
    input_format="RGB",
    num_top_queries=300,
    size_divisibility=32,
)
