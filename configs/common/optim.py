"""AdamW with the official name-regex parameter groups (first matching rule wins).

Per-model rules (shared/docs/rtdetr_official.md §10.1) are set in the model's training config.
"""

import torch

from detectron2.config import LazyCall as L

from neo_rtdetr.solver.param_groups import build_param_groups

# R50 / R50-m: backbone lr 1e-5; no weight decay on encoder/decoder norms and biases.
RULES_R50 = [
    {"pattern": r"backbone", "lr": 1e-5},
    {"pattern": r"^(?:encoder|decoder)\..*(?:norm|bn|bias)", "weight_decay": 0.0},
]
# R18 / R34: backbone norms lr 1e-5 without weight decay; other backbone params lr 1e-5;
# no weight decay on encoder/decoder norms and biases.
RULES_R18 = [
    {"pattern": r"^backbone\..*norm", "lr": 1e-5, "weight_decay": 0.0},
    {"pattern": r"^backbone\.", "lr": 1e-5},
    {"pattern": r"^(?:encoder|decoder)\..*(?:norm|bn|bias)", "weight_decay": 0.0},
]
# R101: only the backbone lr (1e-6); the official list replaces the others.
RULES_R101 = [{"pattern": r"backbone", "lr": 1e-6}]

AdamW = L(torch.optim.AdamW)(
    params=L(build_param_groups)(
        model=None,  # set by the train script
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        rules=RULES_R50,
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
    fused=True,  # one kernel per step (1.15x the foreach train step on an H200, docs/performance.md)
)
