"""`clip_scorer`: a small contrastive image-text model (transformers `CLIPModel`, Radford et al. 2021) trained on the
package's own data, for DALL-E reranking (Ramesh et al. 2021, section 2.6) and as an in-domain CLIP score.

    hf-t2i train clip_scorer --dataset shapes --output-dir runs/clip --max-steps 2000

`<output_dir>/final` holds the model and its `T2IProcessor` (tokenizer + image processor) in one folder:
`hf_t2i.evaluation.load_scorer(path)`, or `CLIPModel.from_pretrained(path)` + `T2IProcessor.from_pretrained(path)`.

Text pooling: transformers' CLIP text model pools at the first `eos_token_id` in `input_ids`, except when
`eos_token_id == 2` (the id of `</s>` in our BPE), which it treats as a legacy config and pools at
`argmax(input_ids)`. The recipe therefore gives its tokenizer an end-of-text token `<|endoftext|>` of its own (a
new id) appended to every caption, and sets the model's `eos_token_id` to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..recipe import Recipe, register_recipe
from .common import ImageTextDataConfig, load_image_text_splits, training_captions


END_OF_TEXT = "<|endoftext|>"


@dataclass
class ClipScorerRecipeConfig(ImageTextDataConfig):
    tokenizer_path: str | None = field(
        default=None, metadata={"help": "a Hugging Face tokenizer; default: train a byte-level BPE on the captions"}
    )
    text_vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary trained on the captions"})
    text_seq_len: int = field(default=32, metadata={"help": "text context; longer captions are truncated"})
    hidden_size: int = field(default=128, metadata={"help": "width of both towers"})
    num_hidden_layers: int = field(default=2, metadata={"help": "layers of each tower"})
    num_attention_heads: int = 4
    intermediate_size: int = 512
    patch_size: int = field(default=8, metadata={"help": "ViT patch side; image_size must be a multiple"})
    projection_dim: int = field(default=128, metadata={"help": "size of the joint embedding"})
    eval_split: str = field(
        default="validation",
        metadata={"help": "shapes only: 'validation' or 'test' (held-out colour-shape pairs) for eval/ metrics"},
    )

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.eval_split not in ("validation", "test"):
            raise ValueError(f"`eval_split` must be 'validation' or 'test', got {self.eval_split!r}.")


def build_scorer_tokenizer(texts, vocab_size: int, model_max_length: int):
    """A byte-level BPE trained on `texts` that ends every caption with its own `<|endoftext|>` token (see the
    module docstring for why CLIP needs an end token whose id is not 2)."""
    from ...tokenization import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(texts, vocab_size=vocab_size, model_max_length=model_max_length)
    return with_end_of_text_token(tokenizer)


def with_end_of_text_token(tokenizer):
    """Add `<|endoftext|>` as the tokenizer's EOS, appended to every encoded text (fast tokenizers only)."""
    from tokenizers import processors

    tokenizer.add_special_tokens({"eos_token": END_OF_TEXT})
    eot = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {END_OF_TEXT}", pair=f"$A {END_OF_TEXT} $B {END_OF_TEXT}", special_tokens=[(END_OF_TEXT, eot)]
    )
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer


def build_clip_config(config: ClipScorerRecipeConfig, tokenizer):
    """The `CLIPConfig` of the scorer: two equal-width towers, the text one causal with EOS pooling."""
    from transformers import CLIPConfig

    c = config
    tower = {
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "intermediate_size": c.intermediate_size,
    }
    text_config = {
        **tower,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": c.text_seq_len,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    vision_config = {**tower, "image_size": c.image_size, "patch_size": c.patch_size}
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=c.projection_dim)


@register_recipe
class ClipScorerRecipe(Recipe):
    """Train a `CLIPModel` with the symmetric contrastive loss (`return_loss=True`) on image-caption pairs; export
    model + `T2IProcessor` to one folder."""

    name = "clip_scorer"
    config_class = ClipScorerRecipeConfig
    training_defaults = {
        "learning_rate": 5e-4,
        "train_batch_size": 64,
        "weight_decay": 0.1,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 100,
        "max_grad_norm": 1.0,
    }

    # -- data and processor -------------------------------------------------------------------------------------
    def _splits(self):
        if not hasattr(self, "_data"):
            from ... import data

            c = self.config
            train, evaluation = load_image_text_splits(c)
            if c.dataset == "shapes" and c.eval_split == "test":
                evaluation = data.build_shapes_dataset(c.eval_size, "test", c.image_size, seed=c.data_seed)
            self._data = train, evaluation
        return self._data

    @property
    def processor(self):
        """`T2IProcessor`: the given tokenizer (with an end-of-text token added), or a BPE trained on the captions."""
        if not hasattr(self, "_processor"):
            from transformers import AutoTokenizer

            from ...image_processing import T2IImageProcessor
            from ...processing_utils import T2IProcessor

            c = self.config
            if c.tokenizer_path:
                tokenizer = AutoTokenizer.from_pretrained(c.tokenizer_path, model_max_length=c.text_seq_len)
                tokenizer = with_end_of_text_token(tokenizer)
            else:
                tokenizer = build_scorer_tokenizer(
                    training_captions(c, self._splits()[0]), c.text_vocab_size, c.text_seq_len
                )
            self._processor = T2IProcessor(T2IImageProcessor(image_size=c.image_size), tokenizer)
        return self._processor

    def _with_inputs(self, dataset):
        """Add input_ids / attention_mask / pixel_values on the fly (deterministic, so resumes stay exact)."""
        processor = self.processor

        def transform(batch):
            inputs = processor(text=batch["text"], images=batch["image"], truncation=True, return_tensors="pt")
            return {key: inputs[key] for key in ("input_ids", "attention_mask", "pixel_values")}

        return dataset.with_transform(transform)

    def build_train_dataset(self):
        return self._with_inputs(self._splits()[0])

    def build_eval_dataset(self):
        return self._with_inputs(self._splits()[1])

    # -- model ----------------------------------------------------------------------------------------------------
    def build_model(self):
        from transformers import CLIPModel

        return CLIPModel(build_clip_config(self.config, self.processor.tokenizer))

    def training_step(self, model, batch, step):
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            return_loss=True,
        )
        scale = self.accelerator.unwrap_model(model).logit_scale.detach().exp() if self.accelerator else 0.0
        return out.loss, {"logit_scale": scale}

    def evaluate(self, model, step):
        """Retrieval recall@1/5 both ways and matched-vs-shuffled preference on the eval split."""
        from ...evaluation.clip_score import matched_vs_shuffled, retrieval_recall

        evaluation = self._splits()[1]
        texts, images = evaluation["text"], evaluation["image"]
        metrics = retrieval_recall(model, self.processor, texts, images)
        metrics.update(matched_vs_shuffled(model, self.processor, texts, images))
        return {k: float(v) for k, v in metrics.items() if k != "num_pairs"}

    def save_pretrained(self, model, output_dir):
        model.save_pretrained(output_dir)
        self.processor.save_pretrained(output_dir)


__all__ = ["ClipScorerRecipe", "ClipScorerRecipeConfig", "build_clip_config", "build_scorer_tokenizer"]
