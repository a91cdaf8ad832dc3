"""Usage: OMP_NUM_THREADS=1 python conversion_scripts/probe_transfusion_pytorch.py (needs transfusion-pytorch==0.20.0).

Why transfusion-pytorch has no converter (conversion_scripts/README.md): an independent functional
re-implementation of transfusion-pytorch 0.20.0's text and modality paths from a state dict, with switches to leave
out each component that has no counterpart in hf_t2i's Transfusion, printing how far the outputs then move."""

import math

import torch
import torch.nn.functional as F
from transfusion_pytorch import Transfusion


torch.manual_seed(0)
DIM, DEPTH, DH, HEADS, DLAT = 32, 2, 16, 2, 8


def build(**tkw):
    torch.manual_seed(0)
    m = Transfusion(
        num_text_tokens=16,
        dim_latent=DLAT,
        modality_default_shape=(4,),
        transformer=dict(dim=DIM, depth=DEPTH, dim_head=DH, heads=HEADS, **tkw),
    ).eval()
    with torch.no_grad():  # move every weight off its init (zero gammas / zero film weights ...)
        for n, p in m.named_parameters():
            if n != "rotary_emb.freqs":
                p.add_(torch.randn_like(p) * 0.3)
    return m


def rms(x, g):  # l2norm * sqrt(d) * (g + 1)
    return F.normalize(x, dim=-1) * x.shape[-1] ** 0.5 * (g + 1)


def rope(x, pos, freqs):  # interleaved pairs (rotary-embedding-torch)
    ang = pos[:, None].float() * freqs[None]  # (n, d/2)
    ang = ang.repeat_interleave(2, -1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rot = torch.stack((-x2, x1), -1).flatten(-2)
    return x * ang.cos() + rot * ang.sin()


def run(sd, x, mode, pos=None, cond=None, skip=()):
    """mode 'text' (causal, rope, text norms) or 'modality' (full attention, no rope, FiLM norms)."""
    b, n, _ = x.shape

    def P(k):
        return sd[k]

    hiddens, skips = [x], []
    for i in range(DEPTH):
        L = f"transformer.layers.{i}."
        if i + 1 <= DEPTH // 2:
            skips.append(x)
        elif "unet" not in skip and L + "0.weight" in sd:
            x = torch.cat((x, skips.pop()), -1) @ P(L + "0.weight").T + x
        for j in (1, 2):
            W = f"{L}{j}."
            h = F.layer_norm(x, (DIM,))
            if mode == "text" or "adaptive" in skip:
                h = h * (P(W + "layernorm_gamma") + 1)
            else:
                gamma, beta = (cond @ P(W + "to_film.weight").T + P(W + "to_film.bias")).chunk(2, -1)
                h = h * (gamma[:, None] + 1) + beta[:, None]
            if j == 1:
                q, k = (h @ P(W + "fn.to_qk.0.weight").T).view(b, n, 2, HEADS, DH).permute(2, 0, 3, 1, 4)
                v = (h @ P(W + "fn.to_v.0.weight").T).view(b, n, HEADS, DH).transpose(1, 2)
                q, k = rms(q, P(W + "fn.q_norm.gamma")), rms(k, P(W + "fn.k_norm.gamma"))
                if mode == "text":
                    q, k = rope(q, pos, P("rotary_emb.freqs")), rope(k, pos, P("rotary_emb.freqs"))
                s = q @ k.transpose(-1, -2) * DH**-0.5
                if "zero_logits" in skip:  # what softcap_value=0 does in the non-flex path
                    s = s * 0
                elif "softcap" not in skip:
                    s = (s / 50).tanh() * 50
                if mode == "text":
                    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -torch.finfo(s.dtype).max)
                o = s.softmax(-1) @ v  # (b, H, n, DH)
                if "gates" not in skip and W + "fn.to_gates.0.weight" in sd:
                    o = o * (h @ P(W + "fn.to_gates.0.weight").T).sigmoid().transpose(1, 2)[..., None]
                o = o.transpose(1, 2).reshape(b, n, HEADS * DH) @ P(W + "fn.to_out.1.weight").T
            else:
                a = h @ P(W + "fn.net.0.weight").T + P(W + "fn.net.0.bias")
                val, gates = a.chunk(2, -1)
                o = (F.gelu(gates) * val) @ P(W + "fn.net.3.weight").T + P(W + "fn.net.3.bias")
            if mode == "text" or "adaptive" in skip:
                o = o * (P(W + "layerscale") + 1)
            else:
                o = o * (cond @ P(W + "to_ada_ln_zero.weight").T + P(W + "to_ada_ln_zero.bias")).sigmoid()[:, None]
            x = x + o
        hiddens.append(x)
        if "attn_res" not in skip:
            hs = torch.stack(hiddens)  # (l, b, n, d)
            w = (rms(hs, P(L + "3.norm_keys.gamma")) @ P(L + "3.pseudo_queries")) * DIM**-0.5  # (l, b, n)
            x = (w.softmax(0)[..., None] * hs).sum(0)
    return rms(x, P("transformer.norm.gamma"))


def time_cond(sd, t):
    w = sd["transformer.to_time_cond.0.weights"]
    f = t[:, None] * w[None] * 2 * math.pi
    e = torch.cat((t[:, None], f.sin(), f.cos()), -1)
    return F.silu(e @ sd["transformer.to_time_cond.1.weight"].T + sd["transformer.to_time_cond.1.bias"])


@torch.no_grad()
def main():
    m = build()
    sd = m.state_dict()
    ids = torch.randint(0, 16, (2, 9), generator=torch.Generator().manual_seed(1))
    ref = m(ids, return_loss=False)
    lat = torch.randn(2, 4, DLAT, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.3, 0.8])
    ref_flow = m.forward_modality(lat, times=t, return_loss=False)

    def text(skip=()):
        e = run(sd, sd["text_embed.weight"][ids], "text", pos=torch.arange(9), skip=skip)
        return e @ sd["to_text_logits.weight"].T

    def flow(skip=()):
        x = lat @ sd["latent_to_model_projs.0.weight"].T + sd["latent_to_model_projs.0.bias"]
        return run(sd, x, "modality", cond=time_cond(sd, t), skip=skip) @ sd["model_to_latent_projs.0.weight"].T

    print("logit scale: max |ref logits|", ref.abs().max().item(), " max |ref flow|", ref_flow.abs().max().item())
    for skip in [(), ("attn_res",), ("softcap",), ("gates",), ("unet",), ("adaptive",)]:
        dl = (text(skip) - ref).abs().max().item()
        df = (flow(skip) - ref_flow).abs().max().item()
        same = torch.equal(text(skip).argmax(-1), ref.argmax(-1))
        print(
            f"leave out {skip or 'nothing'}: text logits max|d|={dl:.3e} (argmax same: {same}), flow max|d|={df:.3e}"
        )
    # time only enters through the adaptive wrappers
    m2 = build()
    for mod in m2.modules():
        if hasattr(mod, "to_film"):
            mod.to_film.weight.zero_()
            mod.to_ada_ln_zero.weight.zero_()
    a = m2.forward_modality(lat, times=torch.tensor([0.1, 0.1]), return_loss=False)
    b_ = m2.forward_modality(lat, times=torch.tensor([0.9, 0.9]), return_loss=False)
    print("to_film / to_ada_ln_zero weights zeroed: flow at t=0.1 vs t=0.9 max|d| =", (a - b_).abs().max().item())
    # softcap_value=0 in the (non-flex, CPU) attention path
    m3 = build(attn_kwargs=dict(softcap_value=0.0))
    sd3, out = m3.state_dict(), m3(ids, return_loss=False)
    e = run(sd3, sd3["text_embed.weight"][ids], "text", pos=torch.arange(9), skip=("zero_logits",))
    print(
        "softcap_value=0 (CPU path) vs all attention logits = 0 (uniform attention): max|d| =",
        (e @ sd3["to_text_logits.weight"].T - out).abs().max().item(),
    )
    # options that can be switched off
    m4 = build(unet_skips=False, attn_kwargs=dict(gate_values=False))
    print(
        "unet_skips=False, gate_values=False keys left:",
        sorted({k.split(".", 3)[-1] for k in m4.state_dict() if k.startswith("transformer.layers.")}),
    )


main()
