import pytest
import torch

from hf_t2i.layers import slice_mask, sparse_image_mask


def test_sparse_masks_text_part_is_causal_and_fully_visible_to_image():
    for kind in ("full", "row", "column", "conv"):
        mask = sparse_image_mask(kind, text_length=3, height=4, width=4, conv_kernel_size=3)
        assert mask.shape == (19, 19)
        assert torch.equal(mask[:3, :3], torch.ones(3, 3, dtype=torch.bool).tril())
        assert not mask[:3, 3:].any()  # text never sees the image
        assert mask[3:, :3].all()  # every image token sees all text
        assert not mask.triu(1).any()  # never the future


def test_row_mask_is_the_papers_local_window():
    # 4x4 grid: image token 8 sees 4..8 (the previous `width` tokens and itself), cf. DALL-E figure 11a.
    image = sparse_image_mask("row", 0, 4, 4)
    assert image[8].nonzero().flatten().tolist() == [4, 5, 6, 7, 8]


def test_column_and_conv_masks():
    column = sparse_image_mask("column", 0, 4, 4)
    assert column[13].nonzero().flatten().tolist() == [1, 5, 9, 13]
    conv = sparse_image_mask("conv", 0, 4, 4, conv_kernel_size=3)
    # token 10 = (2, 2): rows 1..2, columns 1..3, causal
    assert conv[10].nonzero().flatten().tolist() == [5, 6, 7, 9, 10]


def test_bad_mask_arguments():
    with pytest.raises(ValueError, match="attention_type"):
        sparse_image_mask("diagonal", 2, 2, 2)
    with pytest.raises(ValueError, match="conv_kernel_size"):
        sparse_image_mask("conv", 2, 2, 2, conv_kernel_size=4)


def test_slice_mask_pads_a_longer_cache():
    mask = torch.ones(3, 3, dtype=torch.bool).tril()
    part = slice_mask(mask, 2, 1, 5)
    assert part.shape == (1, 1, 1, 5)
    assert part.flatten().tolist() == [True, True, True, False, False]
    with pytest.raises(ValueError, match="exceed"):
        slice_mask(mask, 2, 2, 3)


def test_slice_mask_covers_the_cached_positions_by_default():
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    assert slice_mask(mask, 2, 1).shape == (1, 1, 1, 3)  # positions 0..2 are cached once query 2 is in
    assert torch.equal(slice_mask(mask, 0, 4), mask[None, None, :4, :4])
