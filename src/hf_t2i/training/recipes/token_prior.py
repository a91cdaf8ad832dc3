"""What the priors over image tokens (DALL-E, Parti, Fluid, Muse) share in training: a text tokenizer (trained BPE or
given), the frozen image tokenizer's codes of every training image computed ONCE and cached on disk with
`datasets.map`, caption dropout for classifier-free guidance, held-out losses, sample grids, and the export of a
full pipeline folder. A model's recipe adds its config fields, `build_model` and how its loss is called."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ..recipe import Recipe
from .common import (
    ImageTextDataConfig,
    cached_encode,
    fingerprint,
    frozen_part_folder,
    load_image_text_splits,
    load_pretrained,
    refuse_replace_without_pretrained,
    refuse_tokenizer_path,
    replace_image_tokenizer_field,
    training_captions,
    warn_ignored_settings,
)


#: the architecture fields a fine-tuning run takes from the pretrained model instead of the command line
ARCHITECTURE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


@dataclass
class TokenPriorRecipeConfig(ImageTextDataConfig):
    pretrained_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "fine-tune a trained prior of this recipe (a folder that `hf-t2i train` or `export` wrote, a "
            "Hub id, or a shipped checkpoint's name such as 'parti'): its weights, architecture, text tokenizer, "
            "text length, image size and image tokenizer are used, and the size arguments are ignored"
        },
    )
    replace_image_tokenizer: bool = replace_image_tokenizer_field()
    tokenizer_path: str | None = field(
        default=None, metadata={"help": "a Hugging Face tokenizer; default: train a byte-level BPE on the captions"}
    )
    text_vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary trained on the captions"})
    text_seq_len: int = 32
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    intermediate_size: int = 1024
    conv_kernel_size: int = 11
    hidden_dropout: float = 0.0
    caption_dropout: float = field(default=0.1, metadata={"help": "probability of training on the empty caption"})
    cache_dir: str | None = field(default=None, metadata={"help": "where pre-encoded tokens are cached"})
    sample_prompts: str = field(default="", metadata={"help": "'|'-separated prompts for sample grids"})
    sample_guidance_scale: float = 3.0
    eval_num_images: int = field(
        default=0, metadata={"help": "images generated for hf_t2i.evaluation metrics at each eval (0: off)"}
    )
    eval_metrics: str = field(default="", metadata={"help": "e.g. 'compositional' or 'fid,compositional'; '' = all"})


class TokenPriorRecipe(Recipe):
    """Base of the prior recipes. Subclasses set `image_tokenizer_names` (the image tokenizer classes they accept) and
    `image_tokenizer_argument` (the config field holding its folder), `text_input_names`, and implement
    `processor_class`, `pipeline_class`, `build_model` and `prior_output`, importing their model, processor and
    pipeline inside those methods (the recipes' import rule, see `hf_t2i.training.recipes`)."""

    image_tokenizer_names: tuple[str, ...] = ()
    image_tokenizer_argument: str = ""
    #: processor outputs the prior takes (DALL-E: ids; Parti: ids + padding mask)
    text_input_names: tuple[str, ...] = ("input_ids",)
    #: parts of the model output's loss logged in training and reported on held-out data
    logged_losses: tuple[str, ...] = ()
    training_defaults = {
        "learning_rate": 5e-4,
        "train_batch_size": 32,
        "weight_decay": 0.01,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 200,
        "max_grad_norm": 1.0,
        "ema_decay": 0.999,
    }

    def __init__(self, config=None):
        super().__init__(config)
        self.pretrained_pipeline = None
        refuse_replace_without_pretrained(self.config)
        if self.config.pretrained_model_name_or_path:
            self._start_from_pretrained()
        if not self.image_tokenizer_path:
            raise ValueError(
                f"`{self.image_tokenizer_argument}` is required: the folder of a trained "
                f"{' or '.join(self.image_tokenizer_names)} (the first training stage's final export), unless "
                "`pretrained_model_name_or_path` names a trained prior to fine-tune."
            )
        if not 0 <= self.config.caption_dropout < 1:
            raise ValueError(f"`caption_dropout` must be in [0, 1), got {self.config.caption_dropout}.")
        if self.config.eval_num_images and self.config.dataset == "datasets":
            raise ValueError(
                f"eval_num_images={self.config.eval_num_images} measures FID / compositional accuracy on a built-in "
                "dataset's captions, not on --dataset-name; set it to 0 (held-out losses are still reported)."
            )

    @property
    def image_tokenizer_path(self) -> str:
        return getattr(self.config, self.image_tokenizer_argument)

    def processor_class(self) -> type:
        """The model's processor class, e.g. `DalleProcessor`."""
        raise NotImplementedError

    def pipeline_class(self) -> type:
        """The model's pipeline class, e.g. `DallePipeline`: what `save_pretrained` exports."""
        raise NotImplementedError

    def build_model(self):
        raise NotImplementedError

    # -- fine-tuning a trained prior -------------------------------------------------------------------------------
    def image_tokenizer_of(self, model) -> torch.nn.Module:
        """The image tokenizer nested in a prior of this recipe (`vqmodel`; Fluid overrides)."""
        return model.vqmodel

    def check_pretrained(self, model) -> None:
        """Refuse a pretrained prior that this recipe's settings contradict (Fluid checks its token type and order)."""

    def _start_from_pretrained(self) -> None:
        """Load the prior to fine-tune and take from it what must match its weights: the text tokenizer (as the
        processor), the text length and, where no image tokenizer folder is given, its image tokenizer, saved once
        into the package cache so that the cached codes and their fingerprint work as for a fresh run."""
        from ...models.image_tokenizers import image_tokenizer_size

        c = self.config
        name = c.pretrained_model_name_or_path
        refuse_tokenizer_path(c.tokenizer_path, name)
        if getattr(c, "text_encoder", "own") != "own":
            raise ValueError(
                f"`text_encoder` ({c.text_encoder!r}) cannot be combined with `pretrained_model_name_or_path` "
                f"({name!r}): the pretrained prior brings its own text encoder. Drop `text_encoder`."
            )
        pipe = load_pretrained(self.pipeline_class(), name, self.name)
        model = pipe.model
        self.check_pretrained(model)
        size = image_tokenizer_size(self.image_tokenizer_of(model))
        kept = {f: getattr(model.config, f) for f in ARCHITECTURE_FIELDS}
        warn_ignored_settings(c, {**kept, "image_size": size}, name)
        c.image_size, c.text_seq_len = size, model.config.text_seq_len
        self.pretrained_pipeline = pipe
        self._processor = pipe.processor
        folder = frozen_part_folder(
            self.image_tokenizer_of(model),
            self.image_tokenizer_argument,
            self.image_tokenizer_path,
            self.load_image_tokenizer,
            c.cache_dir,
            name,
            replace=c.replace_image_tokenizer,
        )
        setattr(c, self.image_tokenizer_argument, folder)

    def pretrained_prior(self):
        """The pretrained prior, ready to train: its image tokenizer frozen, as a fresh prior's is."""
        model = self.pretrained_pipeline.model
        self.image_tokenizer_of(model).requires_grad_(False)
        return model

    def prior_output(self, model, text: dict[str, torch.Tensor], image_token_ids: torch.Tensor):
        """The model's forward with labels; the output has `loss` and the per-part losses to log."""
        raise NotImplementedError

    # -- data ------------------------------------------------------------------------------------------------------
    def _splits(self):
        if not hasattr(self, "_data"):
            self._data = load_image_text_splits(self.config)
        return self._data

    def load_text_tokenizer(self):
        """The given tokenizer, or a byte-level BPE trained on the training captions."""
        from transformers import AutoTokenizer

        from ...tokenization import train_bpe_tokenizer

        c = self.config
        if c.tokenizer_path:
            return AutoTokenizer.from_pretrained(c.tokenizer_path, model_max_length=c.text_seq_len)
        return train_bpe_tokenizer(
            training_captions(c, self._splits()[0]), vocab_size=c.text_vocab_size, model_max_length=c.text_seq_len
        )

    @property
    def processor(self):
        """The pretrained prior's processor when fine-tuning, else the image processor and `load_text_tokenizer`."""
        if not hasattr(self, "_processor"):
            from ...image_processing import T2IImageProcessor

            image_processor = T2IImageProcessor(image_size=self.config.image_size)
            self._processor = self.processor_class()(image_processor, self.load_text_tokenizer())
        return self._processor

    def load_image_tokenizer(self):
        """The trained image tokenizer in `image_tokenizer_path`, checked to be of a class this recipe accepts and
        to have been trained at `image_size`."""
        from ...models.image_tokenizers import image_tokenizer_size, load_image_tokenizer

        path = self.image_tokenizer_path
        tokenizer = load_image_tokenizer(path)
        found = type(tokenizer).__name__
        if found not in self.image_tokenizer_names:
            raise ValueError(
                f"`{self.image_tokenizer_argument}` {path!r} holds {found} weights, but `{self.name}` needs one of: "
                f"{', '.join(self.image_tokenizer_names)}."
            )
        size = image_tokenizer_size(tokenizer)
        if size != self.config.image_size:
            raise ValueError(f"`image_size` ({self.config.image_size}) differs from the image tokenizer's ({size}).")
        return tokenizer

    def _encoded(self, dataset, split: str):
        """Caption inputs and image tokens of every pair, computed once and cached on disk."""
        from ...image_processing import T2IImageProcessor

        c = self.config
        device = self.accelerator.device if self.accelerator is not None else torch.device("cpu")
        image_tokenizer = self.load_image_tokenizer().to(device).eval()
        processor = self.processor
        image_processor = T2IImageProcessor(image_size=c.image_size)

        def encode(batch):
            pixels = image_processor(batch["image"], return_tensors="pt")["pixel_values"].to(device)
            text = processor(text=batch["text"], truncation=True)
            out = {name: text[name].tolist() for name in self.text_input_names}
            out["image_token_ids"] = image_tokenizer.encode(pixels).cpu().tolist()
            return out

        with open(os.path.join(self.image_tokenizer_path, "model.safetensors"), "rb") as f:
            weights = f.read()
        tokenizer_json = processor.tokenizer.backend_tokenizer.to_str()
        key = fingerprint(weights, tokenizer_json, str(c.text_seq_len), ",".join(self.text_input_names))
        return cached_encode(dataset, encode, c.cache_dir, "tokens", f"{self.name}-{split}-{key}", batch_size=256)

    def build_train_dataset(self):
        return self._encoded(self._splits()[0], "train")

    def build_eval_dataset(self):
        return self._encoded(self._splits()[1], "eval")

    # -- training -------------------------------------------------------------------------------------------------
    def _empty_caption(self, device) -> dict[str, torch.Tensor]:
        if not hasattr(self, "_empty"):
            self._empty = self.processor(text=[""])
        return {name: self._empty[name].to(device) for name in self.text_input_names}

    def training_step(self, model, batch, step):
        text = {name: batch[name] for name in self.text_input_names}
        if model.training and self.config.caption_dropout > 0:
            rows = text["input_ids"].shape[0]
            drop = (
                torch.rand(rows, generator=self.generator, device=self.generator.device) < self.config.caption_dropout
            )
            empty = self._empty_caption(text["input_ids"].device)
            text = {k: torch.where(drop.to(v.device)[:, None], empty[k], v) for k, v in text.items()}
        out = self.prior_output(model, text, batch["image_token_ids"])
        return out.loss, {name: getattr(out, name).detach() for name in self.logged_losses}

    def evaluate(self, model, step):
        """Held-out cross-entropies (unweighted) and, when `eval_num_images`, the evaluation metrics."""
        dataset = self.build_eval_dataset()
        device = self.accelerator.device
        totals, count = {}, 0
        for start in range(0, len(dataset) if self.logged_losses else 0, 64):
            rows = dataset[start : start + 64]
            text = {name: rows[name].to(device) for name in self.text_input_names}
            out = self.prior_output(model, text, rows["image_token_ids"].to(device))
            size = rows["image_token_ids"].shape[0]
            for name in self.logged_losses:
                totals[name] = totals.get(name, 0.0) + getattr(out, name).item() * size
            count += size
        metrics = {k: v / count for k, v in totals.items()}  # (the loop logs the total as eval/loss)
        if self.config.eval_num_images:
            from ...evaluation import evaluate_for_training
            from ...evaluation.runner import VALIDATION_DATASETS

            metrics.update(
                evaluate_for_training(
                    self.pipeline(model),
                    self.config.dataset,
                    num_images=self.config.eval_num_images,
                    metrics=self.config.eval_metrics or None,
                    data_dir=self.config.data_dir,
                    data_seed=self.config.data_seed,
                    guidance_scale=self.config.sample_guidance_scale,
                    # checkpoints are compared on in-distribution captions; the held-out test split is for reports
                    split="validation" if self.config.dataset in VALIDATION_DATASETS else "test",
                )
            )
        return metrics

    def pipeline(self, model):
        pipe = self.pipeline_class()(model=model, processor=self.processor)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample_images(self, model, step):
        prompts = [p for p in self.config.sample_prompts.split("|") if p] or list(self._splits()[1]["text"][:8])
        generator = torch.Generator().manual_seed(0)
        pipe = self.pipeline(model)
        return pipe(prompts, guidance_scale=self.config.sample_guidance_scale, generator=generator).images

    def save_pretrained(self, model, output_dir):
        self.pipeline(model).save_pretrained(output_dir)


@dataclass
class TextEncoderPriorRecipeConfig(TokenPriorRecipeConfig):
    """A prior that reads its captions through a separate text encoder (Parti, Fluid, Muse)."""

    text_encoder: str = field(
        default="own",
        metadata={"help": "'own' (trained), 'minilm' (frozen all-MiniLM-L6-v2) or a transformers folder"},
    )
    encoder_layers: int = 4
    encoder_attention_heads: int = 8
    encoder_intermediate_size: int = 1024
    num_aligner_layers: int = field(default=0, metadata={"help": "trainable blocks after the text encoder"})


class TextEncoderPriorRecipe(TokenPriorRecipe):
    """A prior recipe whose text encoder is trained with the model (`--text-encoder own`) or pretrained and frozen
    (`minilm` or a transformers folder, whose tokenizer then replaces the trained BPE)."""

    @property
    def pretrained_text_encoder(self) -> str | None:
        """Folder of the pretrained text encoder, or None for an encoder trained with the model."""
        from ...layers.text_encoder import minilm_path

        choice = self.config.text_encoder
        return None if choice == "own" else minilm_path() if choice == "minilm" else choice

    def load_text_tokenizer(self):
        if self.pretrained_text_encoder is None:
            return super().load_text_tokenizer()
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.pretrained_text_encoder, model_max_length=self.config.text_seq_len)

    def text_encoder_kwargs(self) -> dict:
        """The text-encoder arguments of the model config (the names `layers.text_encoder.build_text_encoder` reads)."""
        from transformers import AutoConfig

        c, pretrained = self.config, self.pretrained_text_encoder
        return {
            "text_vocab_size": len(self.processor.tokenizer),
            "text_seq_len": c.text_seq_len,
            "text_encoder_config": AutoConfig.from_pretrained(pretrained).to_dict() if pretrained else None,
            "encoder_layers": c.encoder_layers,
            "encoder_attention_heads": c.encoder_attention_heads,
            "encoder_intermediate_size": c.encoder_intermediate_size,
            "num_aligner_layers": c.num_aligner_layers,
        }

    def load_pretrained_text_encoder(self, model) -> None:
        """Copy the pretrained encoder's weights into a freshly built model (nothing for `--text-encoder own`)."""
        if self.pretrained_text_encoder:
            model.load_text_encoder(self.pretrained_text_encoder)
