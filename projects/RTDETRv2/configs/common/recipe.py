"""RT-DETRv2 scale-adaptive parameter groups (official ``configs/rtdetrv2/rtdetrv2_*.yml``, regexes verbatim).

Each list is a ``rules`` value of :func:`neo_rtdetr.solver.param_groups.build_param_groups` (first matching rule
wins; the official lists are disjoint, so the groups are the official ones). Parameters no rule matches use the
base lr 1e-4 and weight decay 1e-4. Epochs and stop epochs are set in each training config.

| size | backbone lr | no weight decay |
|---|---|---|
| S (R18) | 1e-4 (base) | every norm / bn parameter (backbone, encoder, decoder) |
| M* (R34) | 5e-5 | backbone norms; encoder / decoder norm, bn and bias |
| M (R50-m), L (R50) | 1e-5 | encoder / decoder norm, bn |
| X (R101) | 1e-6 | encoder / decoder norm, bn |
"""

# rtdetrv2_r18vd_120e_coco.yml
RULES_R18 = [
    {"name": "norm_bn", "pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
]
# rtdetrv2_r34vd_120e_coco.yml (the alternations bind as ``(?!(.*norm)|(bn))``: the two backbone rules split the
# backbone into non-norm and norm parameters)
RULES_R34 = [
    {"name": "backbone", "pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 5e-5},
    {"name": "backbone_norm", "pattern": r"^(?=.*backbone)(?=.*norm|bn).*$", "lr": 5e-5, "weight_decay": 0.0},
    {
        "name": "enc_dec_norm_bn_bias",
        "pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$",
        "weight_decay": 0.0,
    },
]
# rtdetrv2_r50vd_m_7x_coco.yml and rtdetrv2_r50vd_6x_coco.yml (frozen backbone norms: no such parameters)
RULES_R50 = [
    {"name": "backbone", "pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 1e-5},
    {"name": "enc_dec_norm_bn", "pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
]
# rtdetrv2_r101vd_6x_coco.yml
RULES_R101 = [
    {"name": "backbone", "pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 1e-6},
    {"name": "enc_dec_norm_bn", "pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
]
