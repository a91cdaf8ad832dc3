"""The U-ViT backbone of aMUSEd (Patil et al. 2024, "aMUSEd: An open MUSE reproduction", section 3), the modules of
[`MuseConfig`]`(backbone="uvit")`. It computes the function of diffusers' `UVit2DModel` (checked by the converter's
parity tests); the layout, for a (g x g) grid of codes, widths E = `embedding_size`, C = `conv_channels`,
H = `hidden_size`:

    codes (B, N) -> Embedding (E) -> RMSNorm -> Linear (C)                                 no position embeddings
    -> [2x2 stride-2 conv]  ->  num_res_blocks x (ConvNeXt block, two cross-attentions)    the "down" stage, g x g
    -> RMSNorm -> Linear (H) -> num_hidden_layers transformer blocks -> RMSNorm -> Linear (C)
    -> num_res_blocks x (ConvNeXt block, two cross-attentions) -> [2x2 transposed conv]    the "up" stage
    -> head: Linear (E) -> RMSNorm -> Linear (codebook)                                    logits (B, N, V)

Conditioning: the text is a CLIP text model's penultimate hidden states (cross-attended, after a Linear to H and an
RMSNorm) and its projected pooled output, which with the sinusoidal features of the five micro-conditions (width,
height, crop top, crop left, aesthetic score; SDXL's micro-conditioning) makes one vector `c` (B, H) through a
two-layer MLP. `c` modulates every ConvNeXt block (`x * (1 + scale) + shift`) and every transformer norm (adaptive
RMSNorm before the self- and cross-attention, adaptive LayerNorm before the MLP). The stages' attentions both
cross-attend to the text states, mapped to C by `Linear(silu(.))` when C != H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModelWithProjection
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ...layers import Attention, FeedForward, sinusoidal_embedding
from .configuration_muse import MuseConfig


#: the micro-conditions, in the order the U-ViT reads them
MICRO_CONDITIONS = ("width", "height", "crop_top", "crop_left", "aesthetic_score")


def rms_norm(config: MuseConfig, width: int) -> nn.RMSNorm:
    return nn.RMSNorm(width, eps=config.layer_norm_eps, elementwise_affine=config.norm_elementwise_affine)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's global response normalisation (Woo et al. 2023, section 3) over a channels-last map:
    `x + gamma * x * n + beta`, with `n` each channel's spatial L2 norm divided by its mean over the channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, h, w, C)."""
        norms = torch.norm(x, p=2, dim=(1, 2), keepdim=True)  # (B, 1, 1, C)
        normalized = norms / (norms.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * normalized) + self.beta + x


class AdaptiveNorm(nn.Module):
    """A norm whose scale and shift come from the condition: `norm(x) * (1 + scale) + shift`, `(scale, shift)` a
    Linear of `silu(c)` (diffusers' `AdaLayerNormContinuous`)."""

    def __init__(self, config: MuseConfig, norm: nn.Module):
        super().__init__()
        width = config.hidden_size
        self.norm = norm
        self.modulation = nn.Linear(width, 2 * width, bias=config.use_bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """x: (B, T, H), condition: (B, H)."""
        scale, shift = self.modulation(F.silu(condition)).chunk(2, dim=1)  # (B, H) each
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class ConvNeXtBlock(nn.Module):
    """ConvNeXt-V2 block (depthwise 3x3 conv, RMSNorm, MLP with GRN) plus a residual, then modulated by the
    condition."""

    def __init__(self, config: MuseConfig):
        super().__init__()
        channels, inner = config.conv_channels, 4 * config.conv_channels
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=config.use_bias)
        self.norm = rms_norm(config, channels)
        self.fc1 = nn.Linear(channels, inner, bias=config.use_bias)
        self.response_norm = GlobalResponseNorm(inner)
        self.fc2 = nn.Linear(inner, channels, bias=config.use_bias)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.modulation = nn.Linear(config.hidden_size, 2 * channels, bias=config.use_bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """x: (B, C, h, w), condition: (B, H)."""
        h = self.depthwise(x).permute(0, 2, 3, 1)  # (B, h, w, C)
        h = self.fc2(self.response_norm(F.gelu(self.fc1(self.norm(h)))))
        x = x + self.dropout(h).permute(0, 3, 1, 2)  # (B, C, h, w)
        scale, shift = self.modulation(F.silu(condition)).chunk(2, dim=1)  # (B, C) each
        return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class StageAttention(nn.Module):
    """The attention that follows each ConvNeXt block: two pre-norm cross-attentions to the text states (diffusers'
    `SkipFFTransformerBlock`; no MLP)."""

    def __init__(self, config: MuseConfig, layer_idx: int):
        super().__init__()
        channels = config.conv_channels
        # the text states have width H; mapped to C (after a SiLU) only when the widths differ
        self.text_mapper = (
            nn.Linear(config.hidden_size, channels, bias=config.use_bias) if config.hidden_size != channels else None
        )
        heads, bias = config.conv_attention_heads, config.use_bias
        self.norm1 = nn.RMSNorm(channels, eps=1e-6)  # fixed epsilon and affine, as in aMUSEd
        self.attn1 = Attention(channels, heads, layer_idx, is_cross_attention=True, bias=bias, config=config)
        self.norm2 = nn.RMSNorm(channels, eps=1e-6)
        self.attn2 = Attention(channels, heads, layer_idx, is_cross_attention=True, bias=bias, config=config)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C), text: (B, S, H)."""
        if self.text_mapper is not None:
            text = self.text_mapper(F.silu(text))  # (B, S, C)
        x = x + self.attn1(self.norm1(x), encoder_hidden_states=text)[0]
        return x + self.attn2(self.norm2(x), encoder_hidden_states=text)[0]


class ConvStage(nn.Module):
    """`num_res_blocks` x (ConvNeXt block, stage attention) on the (g x g) map, optionally after a 2x2 stride-2
    convolution (`resample="down"`) or before a 2x2 transposed convolution (`resample="up"`), each with an RMSNorm
    first."""

    def __init__(self, config: MuseConfig, resample: str | None, layer_offset: int):
        super().__init__()
        channels = config.conv_channels
        self.resample = resample
        if resample is not None:
            self.resample_norm = rms_norm(config, channels)
            conv = nn.Conv2d if resample == "down" else nn.ConvTranspose2d
            self.resample_conv = conv(channels, channels, kernel_size=2, stride=2, bias=config.use_bias)
        self.res_blocks = nn.ModuleList(ConvNeXtBlock(config) for _ in range(config.num_res_blocks))
        self.attentions = nn.ModuleList(StageAttention(config, layer_offset + i) for i in range(config.num_res_blocks))

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resample_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # norm over channels
        return self.resample_conv(x)

    def forward(self, x: torch.Tensor, condition: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x: (B, C, g, g) -> (B, C, g', g') (g' = g / 2 after "down", 2g after "up")."""
        if self.resample == "down":
            x = self._resample(F.pad(x, (0, 1, 0, 1)))  # aMUSEd pads one zero row and column (never read, g even)
        for block, attention in zip(self.res_blocks, self.attentions):
            x = block(x, condition)
            batch, channels, height, width = x.shape
            tokens = x.flatten(2).transpose(1, 2)  # (B, h * w, C)
            x = attention(tokens, text).transpose(1, 2).reshape(batch, channels, height, width)
        if self.resample == "up":
            x = self._resample(x)
        return x


class UViTTransformerBlock(nn.Module):
    """Pre-norm block with adaptive norms: self-attention, cross-attention to the text, GEGLU MLP."""

    def __init__(self, config: MuseConfig, layer_idx: int):
        super().__init__()
        hidden, heads, bias = config.hidden_size, config.num_attention_heads, config.use_bias
        self.norm1 = AdaptiveNorm(config, rms_norm(config, hidden))
        self.self_attn = Attention(hidden, heads, layer_idx, bias=bias, config=config)
        self.norm2 = AdaptiveNorm(config, rms_norm(config, hidden))
        self.cross_attn = Attention(hidden, heads, layer_idx, is_cross_attention=True, bias=bias, config=config)
        layer_norm = nn.LayerNorm(
            hidden, eps=config.layer_norm_eps, elementwise_affine=config.norm_elementwise_affine, bias=bias
        )
        self.norm3 = AdaptiveNorm(config, layer_norm)
        self.mlp = FeedForward(
            hidden, config.intermediate_size, "gelu", glu=True, bias=bias, dropout=config.hidden_dropout
        )

    def forward(self, x: torch.Tensor, text: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """x: (B, T, H), text: (B, S, H), condition: (B, H)."""
        x = x + self.self_attn(self.norm1(x, condition))[0]
        x = x + self.cross_attn(self.norm2(x, condition), encoder_hidden_states=text)[0]
        return x + self.mlp(self.norm3(x, condition))


class UViTBackbone(nn.Module):
    """Everything between the code embeddings and the head (see the module docstring)."""

    def __init__(self, config: MuseConfig):
        super().__init__()
        hidden, channels = config.hidden_size, config.conv_channels
        text_config = config.text_encoder_config
        self.config = config
        self.embedding_norm = rms_norm(config, config.embedding_size)
        self.embedding_projection = nn.Linear(config.embedding_size, channels, bias=config.use_bias)
        self.text_projection = nn.Linear(text_config.hidden_size, hidden, bias=config.use_bias)
        self.text_norm = rms_norm(config, hidden)
        condition_size = text_config.projection_dim + len(MICRO_CONDITIONS) * config.micro_conditioning_size
        self.condition_mlp = nn.Sequential(
            nn.Linear(condition_size, hidden, bias=config.use_bias),
            nn.SiLU(),
            nn.Linear(hidden, hidden, bias=config.use_bias),
        )
        resample = config.downsample
        self.down_stage = ConvStage(config, "down" if resample else None, 0)
        self.input_norm = rms_norm(config, channels)
        self.input_projection = nn.Linear(channels, hidden, bias=config.use_bias)
        self.layers = nn.ModuleList(UViTTransformerBlock(config, i) for i in range(config.num_hidden_layers))
        self.output_norm = rms_norm(config, hidden)
        self.output_projection = nn.Linear(hidden, channels, bias=config.use_bias)
        self.up_stage = ConvStage(config, "up" if resample else None, config.num_res_blocks)
        self.gradient_checkpointing = False

    def embed(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, N, E) code embeddings -> (B, N, C) inputs of the down stage."""
        return self.embedding_projection(self.embedding_norm(token_embeddings))

    def condition(self, pooled_text: torch.Tensor, micro_conditioning: torch.Tensor) -> torch.Tensor:
        """(B, P) projected pooled text and (B, 5) micro-conditions -> (B, H) the vector every norm is modulated by."""
        batch = pooled_text.shape[0]
        features = sinusoidal_embedding(micro_conditioning.flatten(), self.config.micro_conditioning_size)  # (5B, M)
        features = features.reshape(batch, -1)  # (B, 5M): each row's five conditions side by side
        inputs = torch.cat([pooled_text, features], dim=1).to(self.condition_mlp[0].weight.dtype)
        return self.condition_mlp(inputs)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        text: torch.Tensor,
        pooled_text: torch.Tensor,
        micro_conditioning: torch.Tensor,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """
        Args:
            inputs_embeds: (B, N, C) from `embed`, N = g * g in raster order.
            text: (B, S, D) the CLIP encoder's penultimate states.
            pooled_text: (B, P) its projected pooled output.
            micro_conditioning: (B, 5) width, height, crop top, crop left, aesthetic score.
            output_hidden_states: also return the transformer blocks' input and outputs.

        Returns:
            (B, N, C) the up stage's output, and the transformer hidden states (or None).
        """
        batch, length, channels = inputs_embeds.shape
        grid = self.config.image_grid_size
        text = self.text_norm(self.text_projection(text))  # (B, S, H)
        condition = self.condition(pooled_text, micro_conditioning).to(text.dtype)  # (B, H)
        x = inputs_embeds.transpose(1, 2).reshape(batch, channels, grid, grid)  # (B, C, g, g)
        x = self.down_stage(x, condition, text)  # (B, C, g', g')
        height, width = x.shape[-2:]
        x = self.input_projection(self.input_norm(x.flatten(2).transpose(1, 2)))  # (B, g' * g', H)
        hidden_states = [x] if output_hidden_states else None
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = self._gradient_checkpointing_func(layer.__call__, x, text, condition)
            else:
                x = layer(x, text, condition)
            if hidden_states is not None:
                hidden_states.append(x)
        x = self.output_projection(self.output_norm(x))  # (B, g' * g', C)
        x = x.transpose(1, 2).reshape(batch, channels, height, width)  # (B, C, g', g')
        x = self.up_stage(x, condition, text)  # (B, C, g, g)
        return x.flatten(2).transpose(1, 2), (tuple(hidden_states) if hidden_states is not None else None)


class UViTHead(nn.Module):
    """(B, N, C) -> (B, N, V) code logits: Linear to E, RMSNorm, Linear to the codebook (diffusers' `ConvMlmLayer`)."""

    def __init__(self, config: MuseConfig):
        super().__init__()
        self.dense = nn.Linear(config.conv_channels, config.embedding_size, bias=config.use_bias)
        self.norm = rms_norm(config, config.embedding_size)
        self.projection = nn.Linear(config.embedding_size, config.image_vocab_size, bias=config.use_bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.projection(self.norm(self.dense(hidden)))


class CLIPTextConditioning(nn.Module):
    """A CLIP text model with projection, read the aMUSEd way: `last_hidden_state` is its penultimate layer's output
    (B, S, D) and `pooler_output` its projected pooled output `text_embeds` (B, P). The caption is encoded without
    a padding mask (CLIP's causal attention keeps the real tokens' states independent of the padding), as aMUSEd
    does.

    Args:
        config: the model's config; `text_encoder_config` is a `CLIPTextConfig`.
    """

    def __init__(self, config: MuseConfig):
        super().__init__()
        self.model = CLIPTextModelWithProjection(config.text_encoder_config)
        self.freeze = config.freeze_text_encoder
        if self.freeze:
            self.model.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.model.eval()  # a frozen encoder keeps dropout off
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """`attention_mask` is accepted for the common text-encoder call and not used (see the class docstring)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            outputs = self.model(
                input_ids=input_ids, output_hidden_states=True, output_attentions=output_attentions, return_dict=True
            )
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.hidden_states[-2],
            pooler_output=outputs.text_embeds,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )

    def load_pretrained(self, path: str) -> None:
        """Load the CLIP text model's weights from a local transformers folder."""
        source = CLIPTextModelWithProjection.from_pretrained(path)
        missing, unexpected = self.model.load_state_dict(source.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path} does not match the configured encoder: missing {missing}, unexpected {unexpected}."
            )


@torch.no_grad()
def init_uvit_weights(module: nn.Module, std: float) -> bool:
    """Initialise the U-ViT modules `init_transformer_weights` does not know; returns whether `module` was one."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        module.weight.normal_(0.0, std)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, nn.RMSNorm):
        if module.weight is not None:
            module.weight.fill_(1.0)
    elif isinstance(module, GlobalResponseNorm):
        module.gamma.zero_()
        module.beta.zero_()
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        module.weight.fill_(1.0)  # also a LayerNorm without bias, which init_transformer_weights cannot take
        if module.bias is not None:
            module.bias.zero_()
    else:
        return False
    return True


__all__ = ["CLIPTextConditioning", "MICRO_CONDITIONS", "UViTBackbone", "UViTHead", "init_uvit_weights"]
