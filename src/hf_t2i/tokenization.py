"""Text tokenizers: a byte-level BPE trained on the training captions, saved and loaded as a
`PreTrainedTokenizerFast`. Any Hugging Face tokenizer can be used in its place."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast


PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<s>", "</s>"


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    model_max_length: int = 32,
    min_frequency: int = 2,
    lowercase: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style; DALL-E lower-cases captions) on `texts`.

    The special tokens come first: `<pad>` = 0, `<s>` = 1, `</s>` = 2; every encoded text ends with `</s>`.

    Args:
        texts: the training captions.
        vocab_size: target vocabulary size (>= 256 + 3 so that every byte has a token).
        model_max_length: the text context of the model that will use it (`padding="max_length"` pads to it).
        min_frequency: minimum pair frequency for a merge.
        lowercase: NFKC-normalise and lower-case the input (inside the tokenizer, so it travels with it).
    """
    if vocab_size < 259:
        raise ValueError(f"`vocab_size` must be >= 259 (256 bytes + 3 special tokens), got {vocab_size}.")
    tokenizer = Tokenizer(models.BPE())
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
    )


__all__ = ["train_bpe_tokenizer"]
