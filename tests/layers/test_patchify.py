import pytest
import torch

from hf_t2i.layers import patchify, unpatchify


def test_patchify_round_trip_and_raster_layout():
    latents = torch.randn(2, 4, 8, 6)
    tokens = patchify(latents, 2)
    assert tokens.shape == (2, 12, 16)
    # token 1 is the patch at row 0, columns 2..3, laid out (C, p, p)
    assert torch.equal(tokens[0, 1], latents[0, :, 0:2, 2:4].reshape(-1))
    assert torch.equal(unpatchify(tokens, 2, 8, 6), latents)


def test_patchify_rejects_indivisible_size():
    with pytest.raises(ValueError, match="patch_size"):
        patchify(torch.randn(1, 4, 7, 8), 2)
