import math

import pytest
import torch
import torch.nn.functional as F

from hf_t2i.layers.quantizer import FactorizedVectorQuantizer


def quantizer(num_codes=16, code_dim=4):
    torch.manual_seed(0)
    return FactorizedVectorQuantizer(num_codes, code_dim)


def test_codes_are_unit_norm_and_lookup_is_nearest_by_cosine():
    q = quantizer()
    assert torch.allclose(q.codebook.weight.norm(dim=-1), torch.ones(16), atol=1e-6)
    latents = torch.randn(3, 5, 4)
    ids = q.nearest(latents)
    assert ids.shape == (3, 5)
    cosine = F.normalize(latents, dim=-1) @ F.normalize(q.codebook.weight, dim=-1).t()  # (3, 5, K)
    assert torch.equal(ids, cosine.argmax(-1))
    # cosine, not Euclidean: rescaling a latent does not change its code
    assert torch.equal(q.nearest(latents * torch.rand(3, 5, 1) * 10), ids)
    out = q(latents)
    assert torch.allclose(out.quantized.norm(dim=-1), torch.ones(3, 5), atol=1e-5)
    assert torch.allclose(out.quantized, q.lookup(ids), atol=1e-6)


def test_straight_through_gradient_is_that_of_the_normalised_latents():
    q = quantizer()
    latents = torch.randn(2, 6, 4, requires_grad=True)
    weights = torch.randn(2, 6, 4)
    (q(latents).quantized * weights).sum().backward()
    reference = latents.detach().clone().requires_grad_(True)
    (F.normalize(reference, dim=-1) * weights).sum().backward()
    assert torch.allclose(latents.grad, reference.grad, atol=1e-6)
    assert latents.grad.abs().sum() > 0


def test_vq_loss_moves_codes_towards_latents():
    q = quantizer()
    latents = torch.randn(8, 4, requires_grad=True)
    out = q(latents)
    out.loss.backward()
    assert q.codebook.weight.grad is not None and q.codebook.weight.grad.abs().sum() > 0
    unused = torch.ones(16, dtype=torch.bool)
    unused[out.indices] = False
    assert torch.all(q.codebook.weight.grad[unused] == 0)


def test_perplexity_counts_codes_in_use():
    q = quantizer(num_codes=8, code_dim=2)
    codes = q.normalized_codebook().detach()
    four = codes[torch.tensor([0, 1, 2, 3] * 5)]
    assert math.isclose(q(four).perplexity.item(), 4.0, rel_tol=1e-5)
    assert math.isclose(q(codes[torch.zeros(7, dtype=torch.long)]).perplexity.item(), 1.0, rel_tol=1e-6)


def test_usage_moves_only_in_training_mode():
    q = quantizer(num_codes=8, code_dim=2).eval()
    codes = q.normalized_codebook().detach()
    q(codes[torch.zeros(4, dtype=torch.long)])
    assert torch.allclose(q.usage, torch.full((8,), 1 / 8))
    q.train()
    q(codes[torch.zeros(4, dtype=torch.long)])
    assert q.usage[0] > 1 / 8 and torch.all(q.usage[1:] < 1 / 8)
    assert math.isclose(q.usage.sum().item(), 1.0, rel_tol=1e-6)
    assert q.codebook_perplexity() < 8


def test_reinit_replaces_exactly_the_dead_codes_deterministically():
    q = quantizer(num_codes=16, code_dim=4)
    dead = torch.tensor([1, 5, 6, 12])
    q.usage[dead] = 0.0
    before = q.codebook.weight.detach().clone()
    latents = torch.randn(2, 10, 4)
    replaced = q.reinit_dead_codes(latents, generator=torch.Generator().manual_seed(0))
    after = q.codebook.weight.detach().clone()
    assert replaced == 4
    changed = (after != before).any(dim=-1).nonzero().flatten()
    assert torch.equal(changed, dead)
    # each revived code is a distinct normalised latent of the batch
    candidates = F.normalize(latents.reshape(-1, 4), dim=-1)
    matches = [(candidates - after[i]).abs().amax(-1).argmin().item() for i in dead]
    assert all(torch.allclose(after[i], candidates[m], atol=1e-6) for i, m in zip(dead, matches))
    assert len(set(matches)) == 4
    assert torch.allclose(q.usage[dead], torch.full((4,), 1 / 16))
    assert q.reinit_dead_codes(latents) == 0  # nothing dead any more
    # same seed, same codes
    q2 = quantizer(num_codes=16, code_dim=4)
    q2.usage[dead] = 0.0
    q2.reinit_dead_codes(latents, generator=torch.Generator().manual_seed(0))
    assert torch.equal(q2.codebook.weight, q.codebook.weight)


def test_reinit_favours_badly_quantised_latents():
    q = quantizer(num_codes=16, code_dim=4)
    codes = q.normalized_codebook().detach()
    far = -codes[:2]  # opposite to codes 0 and 1: cosine error 2 unless another code is close
    latents = torch.cat([codes[torch.arange(16).repeat(4)], far])  # 64 perfectly quantised rows + 2 bad ones
    q.usage[torch.tensor([3, 9])] = 0.0
    assert q.reinit_dead_codes(latents, generator=torch.Generator().manual_seed(0)) == 2
    revived = q.codebook.weight.detach()[torch.tensor([3, 9])]
    distance = (revived[:, None] - far[None]).abs().amax(-1)  # (2 revived, 2 far)
    assert torch.all(distance.amin(dim=1) < 1e-6) and set(distance.argmin(dim=1).tolist()) == {0, 1}


def test_reinit_with_more_dead_codes_than_latents():
    q = quantizer(num_codes=16, code_dim=4)
    q.usage.zero_()
    assert q.reinit_dead_codes(torch.randn(3, 4), generator=torch.Generator().manual_seed(1)) == 16
    assert torch.allclose(q.codebook.weight.norm(dim=-1), torch.ones(16), atol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_codes"):
        FactorizedVectorQuantizer(1, 4)
    q = quantizer()
    with pytest.raises(ValueError, match="latents"):
        q(torch.randn(2, 3))
    with pytest.raises(ValueError, match="threshold"):
        q.reinit_dead_codes(torch.randn(2, 4), threshold=2.0)
