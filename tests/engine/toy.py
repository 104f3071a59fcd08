"""A tiny model with RT-DETR-like parameter names and a resumable toy data loader, for trainer tests.

The model's training forward takes a batch (list of dicts with ``x``, ``y``, ``image_id``) and
returns a dict of scalar losses, like ``RTDETR``. Batch flags: ``nan`` makes the loss NaN,
``bad_grad`` adds a term with a finite value (0) but a NaN gradient.
"""

from collections import OrderedDict
from typing import Dict, List

import torch
from torch import nn


class ToyDetector(nn.Module):
    """backbone (Linear + BatchNorm1d) -> encoder (Linear + LayerNorm) -> decoder (Linear)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(OrderedDict(conv=nn.Linear(4, 8), norm=nn.BatchNorm1d(8)))
        self.encoder = nn.Sequential(OrderedDict(linear=nn.Linear(8, 8), norm=nn.LayerNorm(8)))
        self.decoder = nn.Sequential(OrderedDict(linear=nn.Linear(8, 1)))

    def forward(self, batch: List[Dict]) -> Dict[str, torch.Tensor]:
        x = torch.stack([d["x"] for d in batch])
        y = torch.stack([d["y"] for d in batch])
        out = self.decoder(torch.relu(self.encoder(self.backbone(x)))).squeeze(-1)
        losses = {"loss_mse": ((out - y) ** 2).mean(), "loss_l1": 0.1 * (out - y).abs().mean()}
        if any(d.get("nan", False) for d in batch):
            losses["loss_mse"] = losses["loss_mse"] * float("nan")
        if any(d.get("bad_grad", False) for d in batch):
            losses["loss_bad"] = torch.sqrt(self.decoder.linear.bias.sum() * 0.0)  # value 0, grad NaN
        return losses


class ToyLoader:
    """Infinite, deterministic batches: batch ``i`` holds samples ``i*bs .. i*bs+bs-1`` (mod N).

    Records ``set_start_iter`` calls and how many iterators were created.

    Args:
        nan_iters / bad_grad_iters: batch indices flagged ``nan`` / ``bad_grad``.
    """

    def __init__(self, *, num_samples: int = 64, batch_size: int = 8, nan_iters=(), bad_grad_iters=(), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(num_samples, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.3
        self.batch_size = batch_size
        self.nan_iters = set(nan_iters)
        self.bad_grad_iters = set(bad_grad_iters)
        self.start_iter = 0
        self.set_start_calls: List[int] = []
        self.num_iter_calls = 0
        self.served: List[int] = []

    def set_start_iter(self, start_iter: int) -> None:
        self.set_start_calls.append(start_iter)
        self.start_iter = start_iter

    def batch(self, i: int) -> List[Dict]:
        n = len(self.x)
        ids = [(i * self.batch_size + j) % n for j in range(self.batch_size)]
        return [
            {"x": self.x[k], "y": self.y[k], "image_id": 1000 + k, "nan": i in self.nan_iters,
             "bad_grad": i in self.bad_grad_iters}
            for k in ids
        ]

    def __iter__(self):
        self.num_iter_calls += 1
        i = self.start_iter
        while True:
            self.served.append(i)
            yield self.batch(i)
            i += 1
