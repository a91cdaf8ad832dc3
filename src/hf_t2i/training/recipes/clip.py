"""`clip_scorer`: a small contrastive image-text model (transformers `CLIPModel`, Radford et al. 2021) trained on the
package's own data, for DALL-E reranking (Ramesh et al. 2021, section 2.6) and as an in-domain CLIP score.

    hf-t2i train clip_scorer --dataset shapes --output-dir runs/clip --max-steps 2000

`<output_dir>/final` holds the model and its `T2IProcessor` (tokenizer + image processor) in one folder:
`hf_t2i.evaluation.load_scorer(path)`, or `CLIPModel.from_pretrained(path)` + `T2IProcessor.from_pretrained(path)`.

Hard negatives (`--hard-negatives`, shapes only): in-batch negatives almost never include a caption with the same
words in another order, so a scorer trained on them alone can read captions as bags of words and score "a red circle
left of a blue square" and "... right of ..." alike (Yuksekgonul et al. 2023), and best-of-N reranking with it cannot
pick the picture with the objects the right way round. With the flag every training pair brings its contradicting twin
(`hf_t2i.data.build_contradicting_twins`: the relation flipped, the colours swapped, another count...; caption and
scene) into the same batch, and the usual symmetric loss over the 2B pairs makes each the other's hard negative, in
both directions. `hf-t2i eval --scorer DIR --metrics retrieval` reports how often a scorer tells pairs from their
twins (`caption_above_contradicting`, `image_above_contradicting`).

Text pooling: transformers' CLIP text model pools at the first `eos_token_id` in `input_ids`, except when
`eos_token_id == 2` (the id of `</s>` in our BPE), which it treats as a legacy config and pools at
`argmax(input_ids)`. The recipe therefore gives its tokenizer an end-of-text token `<|endoftext|>` of its own (a
new id) appended to every caption, and sets the model's `eos_token_id` to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import torch

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
    position_embedding_init: str = field(
        default="normal",
        metadata={
            "help": "normal | sincos_2d: how the image tower's learned patch positions start; sincos_2d (the 2-D "
            "sin-cos table of the patch grid) is what lets it learn which object is left of which"
        },
    )
    hard_negatives: bool = field(
        default=False,
        metadata={
            "help": "shapes only: put each training pair's contradicting twin (its relation flipped, colours swapped, "
            "another count...: caption and scene) in the same batch, so word order and binding decide the match"
        },
    )

    def __post_init__(self):
        super().__post_init__()  # the data fields' own checks (and --dataset-name resolving `dataset`)
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
        from ...configuration_utils import check_position_embedding_init

        check_position_embedding_init(self.position_embedding_init)
        if self.position_embedding_init == "sincos_2d" and self.hidden_size % 4:
            raise ValueError(
                f"`position_embedding_init='sincos_2d'` needs `hidden_size` divisible by 4, got {self.hidden_size}."
            )
        if self.hard_negatives and self.dataset != "shapes":
            raise ValueError(
                f"`hard_negatives` needs the shapes dataset (its specs say what a caption claims), got dataset="
                f"{self.dataset!r}; leave --hard-negatives out for this dataset."
            )


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


@torch.no_grad()
def init_patch_positions_sincos_(model) -> None:
    """Start a `CLIPModel`'s image positions from the 2-D sin-cos table of its patch grid (the class token's at zero).

    CLIP starts its learned patch positions as N(0, 0.02) noise. On `shapes`, a small scorer started that way (with
    `--hard-negatives`) learned colours, shapes, counts and bindings but stayed near chance at telling "left of" from
    "right of"; started from the table, whose nearby patches get similar vectors, it learned the relations too (the
    dalle-shapes model card has the measurements). The positions stay trained parameters.
    """
    from ...layers.positional import sincos_2d_embedding

    embeddings = model.vision_model.embeddings
    table = embeddings.position_embedding.weight  # (1 + patches, width): class token first
    side = embeddings.image_size // embeddings.patch_size
    table[0] = 0
    table[1:] = sincos_2d_embedding(side, side, table.shape[1]).to(table)


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
            if c.hard_negatives:
                twins = data.build_contradicting_twins(
                    len(train), "train", c.image_size, seed=c.data_seed, tasks=c.shapes_tasks or None
                )  # row for row: the same tasks as the training rows
                twins = twins.select_columns(["text", "image"]).rename_columns(
                    {"text": "twin_text", "image": "twin_image"}
                )
                train = datasets.concatenate_datasets([train, twins], axis=1)
            self._eval_twins = None
            if c.dataset == "shapes":  # for `evaluate`: built once, not at every evaluation
                twins = data.build_contradicting_twins(len(evaluation), c.eval_split, c.image_size, seed=c.data_seed)
                self._eval_twins = twins["text"], twins["image"]
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
            features = {key: inputs[key] for key in ("input_ids", "attention_mask", "pixel_values")}
            if "twin_text" in batch:
                twins = processor(text=batch["twin_text"], images=batch["twin_image"], truncation=True)
                features.update({f"twin_{key}": twins[key] for key in ("input_ids", "attention_mask", "pixel_values")})
            return features

        return dataset.with_transform(transform)

    def build_train_dataset(self):
        return self._with_inputs(self._splits()[0])

    def build_eval_dataset(self):
        return self._with_inputs(self._splits()[1])

    # -- model ----------------------------------------------------------------------------------------------------
    def build_model(self):
        from transformers import CLIPModel

        model = CLIPModel(build_clip_config(self.config, self.processor.tokenizer))
        if self.config.position_embedding_init == "sincos_2d":
            init_patch_positions_sincos_(model)
        return model

    def training_step(self, model, batch, step):
        keys = ("input_ids", "attention_mask", "pixel_values")
        inputs = {key: batch[key] for key in keys}
        if "twin_input_ids" in batch:  # every pair and its contradicting twin: 2B pairs, each the other's negative
            inputs = {key: torch.cat([batch[key], batch[f"twin_{key}"]]) for key in keys}
        out = model(**inputs, return_loss=True)
        scale = self.accelerator.unwrap_model(model).logit_scale.detach().exp() if self.accelerator else 0.0
        return out.loss, {"logit_scale": scale}

    def evaluate(self, model, step):
        """Retrieval recall@1/5 both ways, matched-vs-shuffled preference and, on shapes, matched-vs-contradicting
        preference, overall and per task (`hf_t2i.evaluation.clip_score.scorer_metrics`), on the eval split; nested
        results flattened as trackers take them (`<metric>_per_task/<task>`)."""
        from ...evaluation.clip_score import scorer_metrics
        from ...evaluation.runner import flatten_metrics

        evaluation = self._splits()[1]
        tasks = evaluation["task"] if self._eval_twins is not None else None
        metrics = scorer_metrics(
            model, self.processor, evaluation["text"], evaluation["image"], self._eval_twins, tasks=tasks
        )
        metrics.pop("num_pairs", None)
        return flatten_metrics(metrics)

    def save_pretrained(self, model, output_dir):
        model.save_pretrained(output_dir)
        self.processor.save_pretrained(output_dir)


__all__ = [
    "ClipScorerRecipe",
    "ClipScorerRecipeConfig",
    "build_clip_config",
    "build_scorer_tokenizer",
    "init_patch_positions_sincos_",
]
