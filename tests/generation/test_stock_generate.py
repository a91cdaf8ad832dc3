"""Stock transformers `model.generate()` on the raster priors (DALL-E, Parti) is the stock experience: a bare call
draws one whole image that decodes, greedy `generate()` equals the package's own sampler (unguided and guided, the
empty caption of the `generation_config` as the default unconditional branch), a static cache equals the dynamic one,
the generation config survives save / load, and the shipped checkpoints do all of it. Also: every family samples with
`config.return_dict = False`."""

import contextlib
import copy
import re
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig

from hf_t2i import DalleForConditionalGeneration, DalleProcessor, TransfusionForConditionalGeneration
from hf_t2i.checkpoints import resolve_checkpoint
from hf_t2i.models.parti import PartiForConditionalGeneration, PartiProcessor

# the families' test modules, not their `Test*` classes: imported names would be collected (and run) here again
from ..models import test_dalle, test_fluid, test_fluid_class_conditional, test_muse, test_parti, test_transfusion
from ..models.prior_tester import seeded


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Family:
    """What differs between DALL-E and Parti around `generate()`: the prompt, the empty caption, where the codes are."""

    def __init__(self, tester):
        self.tester = tester

    def build(self):
        return self.tester.build_model()

    def prompt(self, model, rows=(0, 1)) -> dict[str, torch.Tensor]:
        """`generate()`'s prompt (DALL-E: the caption ids; Parti: ids and mask)."""
        return self.tester.generation_inputs(model, list(rows))

    def negative(self, model) -> dict[str, torch.Tensor]:
        """The sampler's one-row unconditional caption (`negative_input_ids`, ...)."""
        return self.tester.negative_inputs(model)

    def negative_for_generate(self, model) -> dict[str, torch.Tensor]:
        """The same caption under `generate()`'s names."""
        names = {
            "negative_input_ids": "negative_prompt_ids",
            "negative_attention_mask": "negative_prompt_attention_mask",
        }
        return {names[name]: value for name, value in self.negative(model).items()}

    @contextlib.contextmanager
    def empty_caption_stored(self, model):
        """What a shipped checkpoint carries: the empty caption in the `generation_config` (restored afterwards)."""
        original = copy.deepcopy(model.generation_config)
        stored = {
            "negative_input_ids": "unconditional_input_ids",
            "negative_attention_mask": "unconditional_attention_mask",
        }
        for name, value in self.negative(model).items():
            setattr(model.generation_config, stored[name], value[0].tolist())
        try:
            yield
        finally:
            model.generation_config = original

    def codes(self, model, generated: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Dalle(Family):
    def codes(self, model, generated):
        return model.image_codes_from_generated(generated)


class Parti(Family):
    def codes(self, model, generated):
        assert (generated[:, 0] == model.config.decoder_start_token_id).all()
        return generated[:, 1:]


FAMILIES = {"dalle": Dalle(test_dalle.TestDallePrior()), "parti": Parti(test_parti.TestPartiPrior())}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    family = FAMILIES[request.param]
    return family, family.build()


def generate_seeded(model, seed, **kwargs):
    torch.manual_seed(seed)  # stock generate() draws from the global generator
    return model.generate(**kwargs)


# -- a bare generate() is one image ---------------------------------------------------------------------------------
def test_bare_generate_samples_one_image_that_decodes(family):
    family, model = family
    prompt = family.prompt(model)
    generated = generate_seeded(model, 0, **prompt)
    codes = family.codes(model, generated)
    assert codes.shape == (2, model.config.num_image_tokens)
    assert codes.min() >= 0 and codes.max() < model.config.image_vocab_size
    if isinstance(model, DalleForConditionalGeneration):
        assert torch.equal(generated[:, : model.config.text_seq_len], prompt["input_ids"])  # the caption, kept
    pixels = model.decode_image_tokens(codes)
    size = family.tester.image_size
    assert pixels.shape == (2, 3, size, size) and pixels.min() >= -1 and pixels.max() <= 1
    # sampling is on by default: the seed decides, and decides alone
    assert torch.equal(generate_seeded(model, 0, **prompt), generated)
    assert not torch.equal(generate_seeded(model, 1, **prompt), generated)


def test_generation_config_is_built_from_the_model_config(family):
    family, model = family
    config = model.generation_config
    n = model.config.num_image_tokens
    assert (config.max_new_tokens, config.do_sample) == (n, True)
    # the pipelines' defaults: no top-k (transformers' global default would be 50); no end token, so every generation
    # runs to the last image token
    assert (config.temperature, config.top_k, config.top_p) == (1.0, 0, 1.0)
    assert config.eos_token_id is None and config.pad_token_id is None


# -- greedy generate() == the package's sampler ---------------------------------------------------------------------
@pytest.mark.parametrize("guidance_scale, schedule", [(1.0, "constant"), (3.0, "constant"), (3.0, "linear")])
def test_greedy_generate_equals_the_package_sampler(family, guidance_scale, schedule):
    family, model = family
    prompt = family.prompt(model)
    ours = model.sample_image_tokens(
        **prompt, **family.negative(model), guidance_scale=guidance_scale, guidance_schedule=schedule, do_sample=False
    )
    generated = model.generate(
        **prompt,
        **family.negative_for_generate(model),
        guidance_scale=guidance_scale,
        guidance_schedule=schedule,
        do_sample=False,
    )
    assert torch.equal(family.codes(model, generated), ours)
    if guidance_scale != 1.0:  # guidance changed the image: the comparison above can fail
        assert not torch.equal(ours, model.sample_image_tokens(**prompt, do_sample=False))


def test_guided_generate_defaults_to_the_stored_empty_caption(family):
    family, model = family
    prompt = family.prompt(model)
    with pytest.raises(ValueError, match="negative_prompt_ids"):  # a model built in code knows no tokenizer
        model.generate(**prompt, guidance_scale=3.0, do_sample=False)
    with family.empty_caption_stored(model):
        generated = model.generate(**prompt, guidance_scale=3.0, do_sample=False)
        sampled = generate_seeded(
            model, 0, **prompt, guidance_scale=3.0, top_k=8, output_scores=True, return_dict_in_generate=True
        )
    ours = model.sample_image_tokens(**prompt, **family.negative(model), guidance_scale=3.0, do_sample=False)
    assert torch.equal(family.codes(model, generated), ours)
    # sampled under guidance: finite scores, image codes only
    assert all(not score.isnan().any() for score in sampled.scores)
    codes = family.codes(model, sampled.sequences)
    assert codes.min() >= 0 and codes.max() < model.config.image_vocab_size


def test_guidance_follows_num_return_sequences(family):
    family, model = family
    prompt = family.prompt(model)
    ours = model.sample_image_tokens(**prompt, **family.negative(model), guidance_scale=3.0, do_sample=False)
    # top_k=1 sampling is greedy, and sampling allows several sequences per prompt
    generated = generate_seeded(
        model, 0, **prompt, **family.negative_for_generate(model), guidance_scale=3.0, top_k=1, num_return_sequences=2
    )
    assert torch.equal(family.codes(model, generated), ours.repeat_interleave(2, dim=0))


# -- static cache == dynamic cache ----------------------------------------------------------------------------------
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_static_cache_equals_dynamic_cache(family, guidance_scale):
    family, model = family
    inputs = {**family.prompt(model), **family.negative_for_generate(model), "guidance_scale": guidance_scale}
    dynamic = model.generate(**inputs, do_sample=False)
    static = model.generate(**inputs, do_sample=False, cache_implementation="static")
    assert torch.equal(static, dynamic)


# -- save / load ----------------------------------------------------------------------------------------------------
def test_generation_config_round_trips(family, tmp_path):
    family, model = family
    prompt = family.prompt(model)
    with family.empty_caption_stored(model):
        model.save_pretrained(tmp_path)
        expected = model.generate(**prompt, guidance_scale=3.0, do_sample=False)
        saved = model.generation_config.to_dict()
    stored = GenerationConfig.from_pretrained(tmp_path)  # generation_config.json
    assert stored.max_new_tokens == model.config.num_image_tokens
    assert stored.unconditional_input_ids == family.negative(model)["negative_input_ids"][0].tolist()
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.generation_config.to_dict() == saved
    assert torch.equal(loaded.generate(**prompt, guidance_scale=3.0, do_sample=False), expected)


# -- the shipped checkpoints ----------------------------------------------------------------------------------------
SHIPPED = {
    "dalle": (DalleForConditionalGeneration, DalleProcessor),
    "parti": (PartiForConditionalGeneration, PartiProcessor),
}


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def shipped(request):
    model_class, processor_class = SHIPPED[request.param]
    path = resolve_checkpoint(request.param)
    return FAMILIES[request.param], model_class.from_pretrained(path).eval(), processor_class.from_pretrained(path)


def test_shipped_checkpoint_generates_with_stock_generate(shipped):
    family, model, processor = shipped
    inputs = processor(text=["a red circle left of a blue square"], return_tensors="pt")
    if isinstance(model, DalleForConditionalGeneration):
        inputs = {"input_ids": inputs["input_ids"]}  # DALL-E: the caption ids (its pads are learned, never masked)
    codes = family.codes(model, generate_seeded(model, 0, **inputs))  # bare: one sampled image
    pixels = model.decode_image_tokens(codes)
    size = model.config.vq_config.image_size  # 32 (dalle) or 64 (parti)
    assert pixels.shape == (1, 3, size, size) and pixels.std() > 0.05  # a picture, not a flat image

    # the stored empty caption is the processor's, so bare guidance is the pipelines' guidance
    empty = processor(text=[""], return_tensors="pt")
    assert model.generation_config.unconditional_input_ids == empty["input_ids"][0].tolist()
    negative = {"negative_input_ids": empty["input_ids"]}
    if "attention_mask" in inputs:
        assert model.generation_config.unconditional_attention_mask == empty["attention_mask"][0].tolist()
        negative["negative_attention_mask"] = empty["attention_mask"]
    guided = model.generate(**inputs, guidance_scale=3.0, do_sample=False)
    ours = model.sample_image_tokens(**inputs, **negative, guidance_scale=3.0, do_sample=False)
    assert torch.equal(family.codes(model, guided), ours)


README = Path(__file__).parents[2] / "README.md"


def readme_generate_example() -> str:
    """The README's Python block that calls `model.generate(`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    (block,) = [block for block in blocks if "model.generate(" in block]
    return block


def test_readme_generate_example_runs_as_written():
    namespace = {"path": resolve_checkpoint("dalle")}
    torch.manual_seed(0)
    exec(readme_generate_example(), namespace)  # the README's lines, verbatim
    model, text = namespace["model"], namespace["text"]
    assert isinstance(model, DalleForConditionalGeneration)
    n, size = model.config.num_image_tokens, model.config.vq_config.image_size
    assert namespace["codes"].shape == (1, n) and namespace["pixels"].shape == (1, 3, size, size)
    guided = model.image_codes_from_generated(namespace["guided"])
    assert guided.shape == (1, n) and not torch.equal(guided, namespace["codes"])
    # the example's closing claim: the package's greedy loop is greedy generate()
    assert torch.equal(model.image_codes_from_generated(model.generate(text, do_sample=False)), namespace["tokens"])


# -- bad inputs -----------------------------------------------------------------------------------------------------
def test_bad_generate_inputs_name_the_argument(family):
    family, model = family
    prompt, negative = family.prompt(model), family.negative_for_generate(model)
    guided = {**prompt, **negative, "guidance_scale": 3.0, "max_new_tokens": 2}
    three_rows = {name: value.expand(3, -1) for name, value in negative.items()}
    cases = [
        ({**guided, **three_rows}, "negative_prompt_ids"),
        ({**guided, "num_beams": 2, "do_sample": False}, "num_beams"),
        ({**guided, "guidance_scale": -1.0}, "guidance_scale"),
        ({**guided, "guidance_schedule": "cosine"}, "guidance_schedule"),
    ]
    if isinstance(model, DalleForConditionalGeneration):
        cases += [
            ({"input_ids": prompt["input_ids"][:, :5]}, "input_ids"),  # not the whole text context
            ({**guided, "negative_prompt_ids": negative["negative_prompt_ids"][:, :5]}, "negative_prompt_ids"),
            ({**guided, "negative_prompt_attention_mask": torch.ones_like(prompt["input_ids"])}, "attention_mask"),
        ]
    else:
        start = torch.full((2, 1), model.config.decoder_start_token_id)
        cases.append(({**guided, "decoder_input_ids": start}, "decoder_input_ids"))
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            model.generate(**kwargs)


# -- config.return_dict = False -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tester",
    [
        test_dalle.TestDallePrior,
        test_parti.TestPartiPrior,
        test_fluid.TestFluidContinuousRandomPrior,
        test_fluid.TestFluidDiscreteRasterPrior,
        test_fluid_class_conditional.TestMarPrior,
        test_transfusion.TestTransfusionPriorLinearDDPM,
        test_muse.TestMusePrior,
    ],
)
def test_sampling_ignores_config_return_dict(tester):
    """A user's `config.return_dict = False` changes what the model returns to them, not the package's samplers,
    which read fields of the model outputs."""
    tester = tester()
    model = tester.build_model()
    inputs = tester.guided(model, [0, 1])
    expected = tester.sample(model, seeded(0), **inputs)
    model.config.return_dict = False
    assert torch.equal(tester.sample(model, seeded(0), **inputs), expected)
    assert isinstance(model(**tester.forward_inputs(model, [0, 1])), tuple)  # the setting is in force


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_generate_ignores_config_return_dict(name):
    family = FAMILIES[name]
    model = family.build()
    inputs = {**family.prompt(model), **family.negative_for_generate(model), "guidance_scale": 3.0, "do_sample": False}
    expected = model.generate(**inputs)
    model.config.return_dict = False
    assert torch.equal(model.generate(**inputs), expected)


def test_transfusion_text_and_interleaved_generation_ignore_config_return_dict():
    processor = test_transfusion.tiny_processor()
    torch.manual_seed(0)
    model = TransfusionForConditionalGeneration(test_transfusion.tiny_config(processor)).eval()
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size)  # <boi> the greedy choice: an image
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[model.config.boi_token_id] = 100.0
    model.lm_head = head
    prompt = processor(text=["a red circle"])

    def run():
        text = model.generate_text(**prompt, max_new_tokens=4, do_sample=False)
        interleaved = model.generate_interleaved(
            **prompt, max_new_tokens=3, num_inference_steps=2, guidance_scale=2.0, do_sample=False, generator=seeded(5)
        )
        assert model.config.boi_token_id in interleaved.sequences[0]
        return text, interleaved.image_latents[0]

    expected = run()
    model.config.return_dict = False
    for actual, reference in zip(run(), expected):
        assert torch.equal(actual, reference)


@pytest.mark.parametrize("tester", [test_fluid.TestFluidContinuousRandomPrior, test_muse.TestMusePrior])
def test_parallel_decoders_do_not_claim_generate(tester, tmp_path):
    """Fluid and Muse decode masked tokens in parallel: no `generate()`, so no `can_generate()` and no saved
    generation_config.json (transformers matched "GenerationMixin" in their mixins' names)."""
    model = tester().build_model()
    assert not model.can_generate() and not hasattr(model, "generate")
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "generation_config.json").exists()
    assert getattr(type(model).from_pretrained(tmp_path), "generation_config", None) is None
