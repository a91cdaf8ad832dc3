import math

import pytest
import torch
import torch.nn.functional as F

from hf_t2i import DalleDVAE, DalleDVAEConfig


def tiny():
    torch.manual_seed(0)
    return DalleDVAE(
        DalleDVAEConfig(
            image_size=16, hidden_size=8, vocab_size=32, channel_multipliers=[1, 2], num_blocks_per_group=1
        )
    )


def test_module_names_match_openai_release():
    keys = set(DalleDVAE(DalleDVAEConfig.paper(hidden_size=32, vocab_size=64)).state_dict())
    for key in (
        "encoder.blocks.input.weight",
        "encoder.blocks.group_1.block_1.res_path.conv_4.weight",
        "encoder.blocks.group_2.block_1.id_path.weight",
        "encoder.blocks.group_4.block_2.res_path.conv_1.bias",
        "encoder.blocks.output.conv.weight",
        "decoder.blocks.input.weight",
        "decoder.blocks.group_1.block_1.id_path.weight",
        "decoder.blocks.output.conv.weight",
    ):
        assert key in keys
    assert "encoder.blocks.group_1.block_1.id_path.weight" not in keys  # identity when widths match


def test_encode_decode_shapes_and_id_decoding_equals_one_hot():
    model = tiny()
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    ids = model.encode(pixels)
    assert ids.shape == (2, 64) and ids.dtype == torch.long
    decoded = model.decode(ids)
    assert decoded.shape == (2, 3, 16, 16) and decoded.min() >= -1 and decoded.max() <= 1
    one_hot = F.one_hot(ids.view(2, 8, 8), 32).permute(0, 3, 1, 2).float()
    assert torch.allclose(model.decoder(one_hot), model.decoder.forward_ids(ids.view(2, 8, 8)), atol=1e-5)


def test_training_step_reduces_loss_and_kl_is_nonnegative():
    model = tiny().train()
    pixels = torch.rand(4, 3, 16, 16) * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        out = model(pixels, temperature=1.0, kl_weight=0.1, generator=torch.Generator().manual_seed(step))
        assert out.kl_loss >= -1e-5
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]


def test_gumbel_noise_is_seeded():
    model = tiny()
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    a = model(pixels, generator=torch.Generator().manual_seed(1)).loss
    b = model(pixels, generator=torch.Generator().manual_seed(1)).loss
    assert torch.equal(a, b)


def test_bad_inputs():
    model = tiny()
    with pytest.raises(ValueError, match="pixel_values"):
        model.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="image_token_ids"):
        model.decode(torch.zeros(1, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="image_token_ids"):
        model.decode(torch.full((1, 64), 99))
    with pytest.raises(ValueError, match="temperature"):
        model(torch.zeros(1, 3, 16, 16), temperature=0)
    with pytest.raises(ValueError, match="image_size"):
        DalleDVAEConfig(image_size=30, channel_multipliers=[1, 2, 4])


def test_save_load_round_trip(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path)
    loaded = DalleDVAE.from_pretrained(tmp_path)
    ids = torch.randint(0, 32, (2, 64))
    assert torch.equal(model.decode(ids), loaded.decode(ids))


def test_decoder_code_embedding_starts_informative():
    # The decoder's input conv acts on one-hot codes: it is initialised like an embedding table (std 1), so at
    # initialisation different codes already decode to clearly different images.
    model = tiny()
    assert 0.8 < model.decoder.blocks.input.weight.std().item() < 1.2
    a = model.decode(torch.zeros(1, 64, dtype=torch.long))
    b = model.decode(torch.ones(1, 64, dtype=torch.long))
    assert (a - b).abs().mean() > 1e-3


def test_diversity_loss_measures_codebook_usage():
    config = DalleDVAEConfig(
        image_size=16, vocab_size=8, hidden_size=8, channel_multipliers=[1, 2], num_blocks_per_group=1
    )
    model = DalleDVAE(config)
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        conv = model.encoder.blocks.output.conv
        conv.weight.zero_()
        conv.bias.zero_()  # uniform q everywhere: every code equally used
        uniform = model(pixels, generator=torch.Generator().manual_seed(0))
        conv.bias[3] = 100.0  # one code everywhere
        collapsed = model(pixels, generator=torch.Generator().manual_seed(0), diversity_weight=0.5)
    assert uniform.diversity_loss.item() == pytest.approx(0.0, abs=1e-5)
    assert collapsed.diversity_loss.item() == pytest.approx(math.log(8), abs=1e-4)
    assert collapsed.loss.item() == pytest.approx(collapsed.reconstruction_loss.item() + 0.5 * math.log(8), abs=1e-4)
