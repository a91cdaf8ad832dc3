"""Pre-LayerNorm transformer block (self-attention, optional cross-attention, feed-forward) and `run_blocks`, the
loop over a stack of them that collects what `output_hidden_states` / `output_attentions` ask for."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import Attention
from .mlp import FeedForward


# `token_shift(normalised_input, layer_idx, sub_layer) -> shifted_input`, see `TransformerBlock.forward`
TokenShift = Callable[[torch.Tensor, int, int], torch.Tensor]


class TransformerBlock(GradientCheckpointingLayer):
    """`x + attn(ln(x))`, then `x + cross_attn(ln(x), encoder)` when `cross_attention`, then `x + mlp(ln(x))`.

    Options for converted checkpoints (all off by default): `sandwich_norm` adds a LayerNorm on each branch's output
    before the residual add (CogView's sandwich norm; BART-style DALL·E Mega's `*_layer_norm`), `layer_scale_init`
    multiplies each branch by a learned per-channel scale (CaiT's LayerScale, as in DALLE-pytorch), and
    `mlp_inner_norm` puts a LayerNorm inside the feed-forward before its output projection. With
    `sandwich_norm_mlp=False` only the attention branches get the post-branch LayerNorm (NormFormer / DALL·E Mega:
    `self_attn_layer_norm`, `encoder_attn_layer_norm`, none after the GLU).

    Args:
        hidden_size: model width.
        num_heads: attention heads.
        intermediate_size: feed-forward inner width.
        layer_idx: index of this block in the cache.
        cross_attention: add a cross-attention sub-layer over `encoder_hidden_states`.
        encoder_hidden_size: width of `encoder_hidden_states` (defaults to `hidden_size`).
        activation: feed-forward activation name.
        glu: gated feed-forward.
        norm_eps: LayerNorm epsilon.
        bias: bias in projections.
        attention_dropout: dropout on attention probabilities in training.
        hidden_dropout: dropout on each residual branch in training.
        sandwich_norm: LayerNorm on each branch output (`norm1_post`, `norm_cross_post`, `norm2_post`).
        layer_scale_init: when set, learned per-channel scales `scale1`, `scale_cross`, `scale2` of each branch,
            initialised to this value.
        mlp_inner_norm: LayerNorm on the feed-forward's inner activations (see [`FeedForward`]).
        sandwich_norm_mlp: with `sandwich_norm`, whether the feed-forward branch gets its `norm2_post` too.
        config: the config of the model the block belongs to; its `_attn_implementation` picks the attention
            function (see [`Attention`]). None: SDPA.
        rotate_values: rotary position embeddings rotate the self-attention values too (see [`Attention`]).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        layer_idx: int,
        cross_attention: bool = False,
        encoder_hidden_size: int | None = None,
        activation: str = "gelu",
        glu: bool = False,
        norm_eps: float = 1e-5,
        bias: bool = True,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        sandwich_norm: bool = False,
        layer_scale_init: float | None = None,
        mlp_inner_norm: bool = False,
        sandwich_norm_mlp: bool = True,
        config: PreTrainedConfig | None = None,
        rotate_values: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.self_attn = Attention(
            hidden_size,
            num_heads,
            layer_idx,
            bias=bias,
            dropout=attention_dropout,
            config=config,
            rotate_values=rotate_values,
        )
        self.cross_attn = None
        if cross_attention:
            self.norm_cross = nn.LayerNorm(hidden_size, eps=norm_eps)
            self.cross_attn = Attention(
                hidden_size,
                num_heads,
                layer_idx,
                is_cross_attention=True,
                kv_input_size=encoder_hidden_size,
                bias=bias,
                dropout=attention_dropout,
                config=config,
            )
        self.norm2 = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.mlp = FeedForward(
            hidden_size,
            intermediate_size,
            activation,
            glu=glu,
            bias=bias,
            inner_norm=mlp_inner_norm,
            norm_eps=norm_eps,
        )
        branches = ["1", "2"] + (["_cross"] if cross_attention else [])
        for b in branches:
            if sandwich_norm and (b != "2" or sandwich_norm_mlp):
                setattr(self, f"norm{b}_post", nn.LayerNorm(hidden_size, eps=norm_eps))
            if layer_scale_init is not None:
                setattr(self, f"scale{b}", nn.Parameter(torch.full((hidden_size,), float(layer_scale_init))))
        self.sandwich_norm = sandwich_norm
        self.layer_scale = layer_scale_init is not None
        # No module at all without dropout: a no-op call per sub-layer costs real time in batch-1 decoding.
        self.dropout = nn.Dropout(hidden_dropout) if hidden_dropout > 0 else None

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.dropout is None else self.dropout(x)

    def _branch(self, h: torch.Tensor, name: str) -> torch.Tensor:
        """Post-process one branch output: sandwich norm, layer scale, dropout."""
        post_norm = getattr(self, f"norm{name}_post", None) if self.sandwich_norm else None
        if post_norm is not None:
            h = post_norm(h)
        if self.layer_scale:
            h = h * getattr(self, f"scale{name}")
        return self._drop(h)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        output_attentions: bool = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        token_shift: TokenShift | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """hidden_states: (B, T, C); masks (B or 1, 1, T, K), boolean or additive; `position_embeddings`: rotary
        `(cos, sin)` of the T positions for the self-attention (see [`Attention`]); `token_shift`: called on the
        normalised input of the self-attention and of the feed-forward as `token_shift(x, layer_idx, sub_layer)`
        (sub-layer 0 and 1), its (B, T, C) result feeds the sub-layer (a model's token shifting, e.g. DALLE-pytorch's
        `shift_tokens`; the cross-attention input is never shifted).

        Returns:
            (B, T, C); with `output_attentions`, the tuple `(hidden_states, self_attention_weights,
            cross_attention_weights)` with weights (B, H, T, K), None under a non-eager implementation (and for the
            cross-attention of a block without it).
        """
        normed = self.norm1(hidden_states)
        if token_shift is not None:
            normed = token_shift(normed, self.self_attn.layer_idx, 0)
        h, self_weights = self.self_attn(
            normed,
            attention_mask,
            cache,
            is_causal=is_causal,
            output_attentions=output_attentions,
            position_embeddings=position_embeddings,
        )
        hidden_states = hidden_states + self._branch(h, "1")
        cross_weights = None
        if self.cross_attn is not None:
            h, cross_weights = self.cross_attn(
                self.norm_cross(hidden_states),
                encoder_attention_mask,
                cache,
                encoder_hidden_states=encoder_hidden_states,
                output_attentions=output_attentions,
            )
            hidden_states = hidden_states + self._branch(h, "_cross")
        normed = self.norm2(hidden_states)
        if token_shift is not None:
            normed = token_shift(normed, self.self_attn.layer_idx, 1)
        hidden_states = hidden_states + self._branch(self.mlp(normed), "2")
        if output_attentions:
            return hidden_states, self_weights, cross_weights
        return hidden_states


@dataclass
class BlockStackOutput:
    """What [`run_blocks`] returns.

    Args:
        last_hidden_state: (B, T, C) the last block's output (after `norm`, when given).
        hidden_states: with `output_hidden_states`, the input of every block, then `last_hidden_state`: one more
            than there are blocks (transformers' convention).
        attentions: with `output_attentions` (eager attention), each block's self-attention weights (B, H, T, K).
        cross_attentions: with `output_attentions` (eager attention), each block's cross-attention weights
            (B, H, T, S), for blocks with cross-attention.
    """

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


def run_blocks(
    blocks: Sequence[TransformerBlock],
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
    cache: Cache | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    norm: nn.Module | None = None,
    output_attentions: bool = False,
    output_hidden_states: bool = False,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    token_shift: TokenShift | None = None,
) -> BlockStackOutput:
    """Run `blocks` in order, then `norm`, collecting the per-block outputs that were asked for.

    Args:
        blocks: the [`TransformerBlock`]s.
        hidden_states: (B, T, C) the first block's input.
        attention_mask: one self-attention mask for every block, or one per block (DALL-E's and Parti's sparse
            patterns), as [`TransformerBlock`] takes it.
        cache, encoder_hidden_states, encoder_attention_mask: passed to every block.
        norm: the final LayerNorm, applied to the last block's output.
        output_attentions: collect the attention weights (the eager implementation only: another one warns and the
            fields stay None).
        output_hidden_states: collect every block's input and the final output.
        position_embeddings: rotary `(cos, sin)` for every block's self-attention (see [`Attention`]).
        token_shift: passed to every block (see [`TransformerBlock.forward`]).
    """
    masks = attention_mask if isinstance(attention_mask, Sequence) else [attention_mask] * len(blocks)
    if len(masks) != len(blocks):
        raise ValueError(f"Got {len(masks)} attention masks for {len(blocks)} blocks; pass one per block.")
    states = [] if output_hidden_states else None
    attentions, cross_attentions = ([], []) if output_attentions else (None, None)
    for block, mask in zip(blocks, masks):
        if states is not None:
            states.append(hidden_states)
        if not output_attentions:
            hidden_states = block(
                hidden_states,
                mask,
                cache,
                encoder_hidden_states,
                encoder_attention_mask,
                position_embeddings=position_embeddings,
                token_shift=token_shift,
            )
            continue
        hidden_states, self_weights, cross_weights = block(
            hidden_states,
            mask,
            cache,
            encoder_hidden_states,
            encoder_attention_mask,
            output_attentions=True,
            position_embeddings=position_embeddings,
            token_shift=token_shift,
        )
        if self_weights is not None:
            attentions.append(self_weights)
        if cross_weights is not None:
            cross_attentions.append(cross_weights)
    if norm is not None:
        hidden_states = norm(hidden_states)
    if states is not None:
        states.append(hidden_states)
    return BlockStackOutput(
        last_hidden_state=hidden_states,
        hidden_states=tuple(states) if states is not None else None,
        attentions=tuple(attentions) if attentions else None,
        cross_attentions=tuple(cross_attentions) if cross_attentions else None,
    )


def transformer_blocks(config, cross_attention: bool = False, **options) -> nn.ModuleList:
    """The `config.num_hidden_layers` [`TransformerBlock`]s of a model config.

    Reads `hidden_size`, `num_attention_heads`, `intermediate_size`, `hidden_act`, `layer_norm_eps` and
    `hidden_dropout`, and hands the config to the blocks (its `_attn_implementation` picks the attention function);
    `options` are the other [`TransformerBlock`] arguments, passed on as they are.
    """
    return nn.ModuleList(
        TransformerBlock(
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            layer_idx=i,
            cross_attention=cross_attention,
            activation=config.hidden_act,
            norm_eps=config.layer_norm_eps,
            hidden_dropout=config.hidden_dropout,
            config=config,
            **options,
        )
        for i in range(config.num_hidden_layers)
    )
