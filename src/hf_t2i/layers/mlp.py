"""Feed-forward blocks."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class FeedForward(nn.Module):
    """Position-wise MLP: `fc2(act(fc1(x)))`, or gated (`glu=True`): `fc2(act(fc1_gate(x)) * fc1_up(x))`.

    With `inner_norm=True` a LayerNorm over the inner width comes right before `fc2` (NormFormer's extra norm, as in
    DALL·E Mega's GLU blocks).

    Args:
        hidden_size: input and output width.
        intermediate_size: inner width.
        activation: a transformers activation name ("gelu", "gelu_new", "silu", ...).
        glu: gated variant (GEGLU / SwiGLU); `fc1` then projects to twice the inner width.
        bias: whether the projections have a bias.
        dropout: dropout on the output in training.
        inner_norm: LayerNorm on the inner activations before `fc2`.
        norm_eps: epsilon of that LayerNorm.
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        activation: str = "gelu",
        glu: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
        inner_norm: bool = False,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if activation not in ACT2FN:
            raise ValueError(f"`hidden_act` must be a transformers activation name, got {activation!r}.")
        self.glu = glu
        self.fc1 = nn.Linear(hidden_size, intermediate_size * (2 if glu else 1), bias=bias)
        self.act = ACT2FN[activation]
        self.inner_norm = nn.LayerNorm(intermediate_size, eps=norm_eps) if inner_norm else None
        self.fc2 = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.glu:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        if self.inner_norm is not None:
            h = self.inner_norm(h)
        h = self.fc2(h)
        return h if self.dropout is None else self.dropout(h)
