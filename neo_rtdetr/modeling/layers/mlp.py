"""A plain multi-layer perceptron with the official RT-DETR parameter layout (``layers.{i}``)."""

from typing import Union

import torch.nn as nn
from torch import Tensor

from .conv_norm import get_activation

__all__ = ["MLP", "get_activation"]

class MLP(nn.Module):
    """``num_layers`` Linear layers with an activation between them (none after the last).

    The hidden layers all have ``hidden_dim`` features. Parameters are ``layers.{i}.weight/bias``, as in the
    official ``MLP`` of rtdetr_pytorch, so official checkpoints load unchanged.

    Args:
        input_dim: features of the input (last dim).
        hidden_dim: features of every hidden layer.
        output_dim: features of the output.
        num_layers: number of Linear layers (>= 1).
        act: activation between layers: a name ("relu" by default), a module, or None for identity.

    Shapes:
        input [..., input_dim] -> output [..., output_dim].
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        act: Union[str, nn.Module, None] = "relu",
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.act = get_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        last = self.num_layers - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return x
