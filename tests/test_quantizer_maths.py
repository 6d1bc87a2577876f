"""Each quantizer's own maths, and the shared codebook machinery (k-means, restarts, EMA, rotation trick)."""

from __future__ import annotations

import math

import pytest
import torch

from vqkit.codebook import cluster_sums, code_stats, kmeans, nearest_code, rotation_trick
from vqkit.discovery import load_plugins
from vqkit.errors import OptionError
from vqkit.model import build_model
from vqkit.registry import quantizers

load_plugins()


def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact pairwise distances (torch.cdist's matmul form is off by ~1e-3 near zero)."""
    return (a[:, None, :] - b[None, :, :]).norm(dim=-1)


def Q(name: str, *args, **kwargs):
    torch.manual_seed(0)
    return quantizers.get(name)(*args, **kwargs)


def blobs(centres: torch.Tensor, per: int = 50, noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = centres.repeat_interleave(per, 0)
    return pts + noise * torch.randn(pts.shape, generator=g)


# --- shared machinery ---------------------------------------------------------------------------------------
def test_cluster_sums_match_a_one_hot_reference() -> None:
    z = torch.randn(100, 5)
    idx = torch.randint(0, 7, (100,))
    counts, sums = cluster_sums(z, idx, 7)
    onehot = torch.nn.functional.one_hot(idx, 7).float()
    torch.testing.assert_close(counts, onehot.sum(0))
    torch.testing.assert_close(sums, onehot.t() @ z)


def test_kmeans_finds_separated_clusters() -> None:
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0], [0.0, -5.0]])
    found = kmeans(blobs(centres), 4, iters=10)
    # Each true centre has a centroid within the noise.
    assert (dist(centres, found).min(dim=1).values < 0.1).all()


def test_rotation_trick_value_and_gradient() -> None:
    torch.manual_seed(0)
    z = torch.randn(6, 5, requires_grad=True)
    e = torch.randn(6, 5)
    out = rotation_trick(z, e)
    torch.testing.assert_close(out, e, rtol=1e-5, atol=1e-5)
    g = torch.randn(6, 5)
    (out * g).sum().backward()
    # Reference: grad = (|e|/|z|) R^T g with R the rotation taking z's direction onto e's (treated constant).
    for i in range(6):
        zi, ei = z[i].detach(), e[i]
        u, q = zi / zi.norm(), ei / ei.norm()
        w = (u + q) / (u + q).norm()
        r = torch.eye(5) - 2 * torch.outer(w, w) + 2 * torch.outer(q, u)
        torch.testing.assert_close(r @ u, q, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(z.grad[i], (ei.norm() / zi.norm()) * r.t() @ g[i], rtol=1e-4, atol=1e-5)
    # Unlike straight-through, the gradient is not simply g: it is rotated.
    assert not torch.allclose(z.grad, g, atol=1e-3)


def test_code_stats() -> None:
    stats = code_stats(torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), 8)
    assert float(stats["codes_used"]) == 4
    assert math.isclose(float(stats["perplexity"]), 4.0, rel_tol=1e-5)


# --- vq: k-means init, dead-code restart --------------------------------------------------------------------
def test_kmeans_init_puts_the_codebook_on_the_first_batch() -> None:
    centres = torch.randn(4, 8) * 5
    z = blobs(centres, per=16).reshape(4, 16, 8).permute(0, 2, 1).reshape(4, 8, 4, 4)
    q = Q("vq", 8, 4, init="kmeans", restart_after=0)
    q.train()
    out = q(z)
    assert (dist(centres, q.embedding.weight.detach()).min(dim=1).values < 0.1).all()
    assert float(out.stats["codes_used"]) == 4
    # Only once: a second batch does not re-run k-means.
    w = q.embedding.weight.detach().clone()
    q(z + 100)
    assert torch.equal(w, q.embedding.weight.detach())


def test_dead_codes_are_restarted_from_latents() -> None:
    q = Q("vq", 4, 8, init="normal", restart_after=2)
    with torch.no_grad():
        q.embedding.weight[1:] = 1000.0  # never the nearest: dead from the start
    z = torch.randn(2, 4, 4, 4)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    q.train()
    for _ in range(3):
        q(z)
    w = q.embedding.weight.detach()
    assert int(q.upkeep.restarts) == 7
    # Every restarted code now sits exactly on one of the batch's latents.
    assert (dist(w[1:], flat).min(dim=1).values < 1e-4).all()
    assert float(q(z).stats["codes_used"]) > 1


def test_restart_off_keeps_dead_codes() -> None:
    q = Q("vq", 4, 8, init="normal", restart_after=0)
    with torch.no_grad():
        q.embedding.weight[1:] = 1000.0
    q.train()
    for _ in range(5):
        q(torch.randn(2, 4, 4, 4))
    assert int(q.upkeep.restarts) == 0 and float(q.embedding.weight.detach()[1:].min()) > 999


def test_original_configuration_is_reachable() -> None:
    q = Q("vq", 16, 64, init="uniform", restart_after=0)
    assert (
        q.embedding.weight.abs().max() <= 1 / 64 and not q.upkeep.kmeans_init and q.upkeep.restart_after == 0
    )


@pytest.mark.parametrize("name", ["vq", "ema", "cosine", "simvq", "rvq", "gvq"])
def test_rotation_estimator_is_an_option(name: str) -> None:
    q = Q(name, 8, 16, estimator="rotation")
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    q(z).z_q.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    with pytest.raises(ValueError, match="estimator"):
        Q(name, 8, 16, estimator="nope")


# --- ema --------------------------------------------------------------------------------------------------
def test_ema_update_follows_the_formula_and_converges_to_cluster_means() -> None:
    q = Q("ema", 2, 2, init="normal", restart_after=0, decay=0.5, eps=0.0)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    q._set_rows(None, q.embedding.weight.detach().clone())
    flat = torch.tensor([[3.0, 1.0], [3.0, -1.0], [-2.0, 0.0]])
    z = flat.t().reshape(1, 2, 1, 3)
    q.train()
    q(z)
    # counts (2, 1), sums ((6, 0), (-2, 0)); N = 0.5*1 + 0.5*n, m = 0.5*e + 0.5*sum.
    expected = torch.tensor([[(0.5 * 1 + 0.5 * 6) / 1.5, 0.0], [(0.5 * -1 + 0.5 * -2) / 1.0, 0.0]])
    torch.testing.assert_close(q.embedding.weight.detach(), expected)
    for _ in range(30):
        q(z)
    torch.testing.assert_close(
        q.embedding.weight.detach(), torch.tensor([[3.0, 0.0], [-2.0, 0.0]]), atol=1e-4, rtol=0
    )


def test_ema_codebook_gets_no_gradient_and_loss_is_commitment_only() -> None:
    q = Q("ema", 4, 8)
    z = torch.randn(2, 4, 2, 2, requires_grad=True)
    out = q(z)
    out.loss.backward()
    assert q.embedding.weight.grad is None
    codes = q.dequantize(out.indices)
    torch.testing.assert_close(out.loss, 0.25 * torch.nn.functional.mse_loss(z, codes), rtol=1e-4, atol=1e-6)


# --- cosine -----------------------------------------------------------------------------------------------
def test_cosine_codes_are_unit_vectors_and_the_most_similar() -> None:
    q = Q("cosine", 6, 10, init="normal", restart_after=0)
    z = torch.randn(3, 6, 2, 2) * 7
    out = q(z)
    assert torch.allclose(out.z_q.norm(dim=1), torch.ones(3, 2, 2), atol=1e-5)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 6)
    cos = (
        torch.nn.functional.normalize(flat, dim=-1)
        @ torch.nn.functional.normalize(q.embedding.weight, dim=-1).t()
    )
    assert torch.equal(out.indices.reshape(-1), cos.argmax(-1))


# --- simvq ------------------------------------------------------------------------------------------------
def test_simvq_trains_the_projection_not_the_frozen_codebook() -> None:
    q = Q("simvq", 4, 8, init="normal")
    frozen = q.embedding.weight.detach().clone()
    w = q.proj.weight.detach().clone()
    opt = torch.optim.SGD([p for p in q.parameters() if p.requires_grad], lr=0.1)
    out = q(torch.randn(2, 4, 3, 3))
    out.loss.backward()
    opt.step()
    assert torch.equal(q.embedding.weight.detach(), frozen)
    assert not torch.equal(q.proj.weight.detach(), w)
    torch.testing.assert_close(q.codebook(), q.embedding.weight @ q.proj.weight.t())


def test_simvq_restart_hits_the_latent_through_the_projection() -> None:
    q = Q("simvq", 4, 8, init="normal", restart_after=1)
    with torch.no_grad():
        q.proj.weight.copy_(torch.randn(4, 4) + 2 * torch.eye(4))
        q.embedding.weight[1:] = 1000.0
    z = torch.randn(2, 4, 2, 2)
    q.train()
    for _ in range(3):  # dead codes are looked for every other step: the restart comes at the third step
        q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert (dist(q.codebook().detach()[1:], flat).min(dim=1).values < 1e-3).all()


# --- fsq --------------------------------------------------------------------------------------------------
def test_fsq_fixes_dim_and_codebook_size() -> None:
    q = Q("fsq", None, None)
    assert (q.dim, q.codebook_size) == (4, 1000)
    assert Q("fsq", 4, 1000).dim == 4
    with pytest.raises(ValueError, match="fixes its latent dim"):
        Q("fsq", 64, None)
    with pytest.raises(ValueError, match="fixes its codebook size"):
        Q("fsq", None, 512)
    with pytest.raises(OptionError, match="fixes its latent dim"):
        build_model("conv3", "fsq", channels=1, latent_dim=64)
    model = build_model("conv3", "fsq", channels=1, quantizer_options={"levels": [8, 8, 8]})
    assert model.spec.latent_dim == 3 and model.spec.codebook_size == 512


def _fsq_preimages(q) -> torch.Tensor:
    """One latent per code: invert the bound at each level's integer (every code must be reachable)."""
    idx = torch.arange(q.codebook_size)
    levels = torch.tensor(q.levels)
    basis = q._basis
    digits = (idx.unsqueeze(1) // basis) % levels
    half = (levels - 1) * (1 + 1e-3) / 2
    offset = (levels % 2 == 0).float() * 0.5
    target = (digits - levels // 2).float()
    return torch.atanh((target + offset) / half) - torch.atanh(offset / half)


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (3, 4)])
def test_fsq_every_code_is_reachable_and_round_trips(levels: tuple[int, ...]) -> None:
    q = Q("fsq", None, None, levels=levels)
    pre = _fsq_preimages(q)
    z = pre.t().reshape(1, len(levels), 1, -1)
    idx = q.quantize(z)
    assert torch.equal(idx.reshape(-1), torch.arange(q.codebook_size))
    zq = q.dequantize(idx)
    assert (
        zq.abs().max() <= 1
        and torch.unique(zq.reshape(len(levels), -1).t(), dim=0).shape[0] == q.codebook_size
    )
    torch.testing.assert_close(q(z).z_q, zq)


def test_fsq_under_bf16_autocast_keeps_every_code() -> None:
    """bf16 holds integers exactly only up to 256: codes of 8,5,5,5 (0..999) formed in bf16 merge."""
    q = Q("fsq", None, None)
    z = _fsq_preimages(q).t().reshape(1, 4, 1, -1).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
        idx = q.quantize(z)
    assert torch.equal(idx.reshape(-1), torch.arange(1000))
    assert torch.equal(out.indices, idx) and float(out.stats["codes_used"]) == 1000
    # The trap this guards against: the same digits combined into a code in bf16 lose codes.
    digits = torch.round(q._bounded(z.float().permute(0, 2, 3, 1).reshape(-1, 4))) + q._half_width()
    naive = (digits.to(torch.bfloat16) * q._basis.to(torch.bfloat16)).sum(-1)
    assert naive.unique().numel() < 1000


def test_fsq_spread_term_is_the_entropy_of_the_mean_code_distribution() -> None:
    """The training loss is 1 - H(mean soft code distribution) / log K, checked against a brute-force sum
    over every code; one code for every latent scores far above the whole grid (near 0); inference adds none."""
    import itertools

    q = Q("fsq", None, None, levels=(4, 3, 2), entropy_weight=1.0)
    q.train()
    z = torch.randn(200, 3, generator=torch.Generator().manual_seed(1))
    b = q._bounded(z)
    probs = [
        torch.softmax(-((b[:, c : c + 1] - (torch.arange(n) - n // 2)) ** 2) / 0.5, 1)
        for c, n in enumerate(q.levels)
    ]
    mean = torch.stack(
        [
            (probs[0][:, i] * probs[1][:, j] * probs[2][:, k]).mean()
            for i, j, k in itertools.product(*map(range, q.levels))
        ]
    )
    brute = 1 + (mean * mean.log()).sum() / math.log(24)
    loss = q(z.t().reshape(1, 3, 1, 200)).loss
    torch.testing.assert_close(loss, brute, rtol=1e-5, atol=1e-6)
    grid = _fsq_preimages(q)
    assert float(q(grid.t().reshape(1, 3, 1, -1)).loss) < 0.05
    assert float(q(grid[:1].repeat(24, 1).t().reshape(1, 3, 1, -1)).loss) > 0.5
    # The loss moves latents: its gradient is not zero, and above 4,096 codes the per-channel form is used.
    z.requires_grad_(True)
    q(z.t().reshape(1, 3, 1, 200)).loss.backward()
    assert z.grad.abs().sum() > 0
    big = Q("fsq", None, None, levels=(8, 8, 8, 8, 5), entropy_weight=1.0).train()
    assert 0 <= float(big(torch.randn(1, 5, 4, 4)).loss) < 1
    q.eval()
    assert float(q(z.detach().t().reshape(1, 3, 1, 200)).loss) == 0.0


# --- lfq --------------------------------------------------------------------------------------------------
def test_lfq_codes_are_the_sign_bits() -> None:
    q = Q("lfq", 3, None)
    assert q.codebook_size == 8
    z = torch.tensor([[1.0, -1.0, 2.0], [-0.5, -0.1, -3.0]]).reshape(2, 3, 1, 1)
    idx = q.quantize(z)
    assert idx.reshape(-1).tolist() == [0b101, 0b000]
    torch.testing.assert_close(q.dequantize(idx), torch.sign(z))


def test_lfq_sizes() -> None:
    assert (Q("lfq", None, None).dim, Q("lfq", None, 1024).dim, Q("lfq", 5, 32).codebook_size) == (9, 10, 32)
    with pytest.raises(ValueError, match="power of two"):
        Q("lfq", None, 1000)
    with pytest.raises(ValueError, match="2\\*\\*dim"):
        Q("lfq", 4, 32)


def test_lfq_spherical_changes_the_training_loss_not_the_codes() -> None:
    """On the sphere the loss does not depend on the latents' length (a latent grown 10x away from the
    codes is as near them as before); the codes are the signs either way."""
    sphere, raw = Q("lfq", 6, None), Q("lfq", 6, None, spherical=False)
    z = torch.randn(4, 6, 3, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sphere.quantize(z), raw.quantize(z))
    assert torch.equal(sphere.train()(z).indices, raw.quantize(z))
    torch.testing.assert_close(sphere(z * 10).loss, sphere(z).loss)
    assert float(raw.train()(z * 10).loss) > 10 * float(raw(z).loss)


def test_lfq_entropy_loss_rewards_a_spread_codebook() -> None:
    q = Q("lfq", 3, None, commitment=0.0, entropy_weight=1.0, temperature=0.1)
    corners = torch.tensor([[(i >> b) & 1 for b in range(3)] for i in range(8)]).float() * 2 - 1
    spread = corners.repeat(4, 1).t().reshape(1, 3, 4, 8)
    collapsed = corners[:1].repeat(32, 1).t().reshape(1, 3, 4, 8)
    # As fractions of log K: -1 for a confident batch on every code, 0 for one code; in nats, log 8 apart.
    torch.testing.assert_close(q(spread).loss, torch.tensor(-1.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(q(collapsed).loss, torch.tensor(0.0), atol=1e-3, rtol=0)
    nats = Q("lfq", 3, None, commitment=0.0, entropy_weight=1.0, temperature=0.1, entropy_units="nats")
    torch.testing.assert_close(nats(spread).loss, torch.tensor(-math.log(8)), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="entropy_units"):
        Q("lfq", 3, None, entropy_units="bits")
    # The per-bit factorisation agrees exactly on per-latent entropy; at a spread batch also on the total.
    from vqkit.plugins.quantizers import lfq as lfq_module

    flat = spread.permute(0, 2, 3, 1).reshape(-1, 3)
    exact = q._entropy_loss(flat)
    old = lfq_module.EXACT_ENTROPY_MAX_CODES
    try:
        lfq_module.EXACT_ENTROPY_MAX_CODES = 0
        torch.testing.assert_close(q._entropy_loss(flat), exact, rtol=1e-4, atol=1e-4)
    finally:
        lfq_module.EXACT_ENTROPY_MAX_CODES = old


# --- rvq, gvq -----------------------------------------------------------------------------------------------
def test_rvq_each_stage_reduces_the_error() -> None:
    q = Q("rvq", 8, 32, stages=4, restart_after=0)
    q.train()
    for i in range(3):
        q(torch.randn(8, 8, 4, 4, generator=torch.Generator().manual_seed(i)))
    q.eval()
    z = torch.randn(8, 8, 4, 4)
    idx = q.quantize(z)
    assert idx.shape == (8, 4, 4, 4)
    errors = []
    for s in range(1, 5):
        partial = sum(stage.embed(idx[..., i]) for i, stage in enumerate(q.stages[:s])).permute(0, 3, 1, 2)
        errors.append(float(((partial.detach() - z) ** 2).mean()))
    assert all(a > b for a, b in zip(errors, errors[1:]))
    torch.testing.assert_close(q.dequantize(idx), partial.detach())


def test_rvq_quantizer_dropout_decodes_a_prefix() -> None:
    q = Q("rvq", 4, 16, stages=3, dropout=1.0, restart_after=0, init="normal")
    q.train()
    z = torch.randn(2, 4, 2, 2)
    torch.manual_seed(3)
    seen = set()
    for _ in range(20):
        out = q(z)
        assert out.indices.shape == (2, 2, 2, 3)
        for n in range(1, 4):
            prefix = sum(st.embed(out.indices[..., i]) for i, st in enumerate(q.stages[:n])).permute(
                0, 3, 1, 2
            )
            if torch.allclose(out.z_q, prefix, atol=1e-5):
                seen.add(n)
                break
        else:
            raise AssertionError("z_q is not a prefix sum of the stages")
    assert seen == {1, 2, 3}


def test_gvq_quantizes_each_group_with_its_own_codebook() -> None:
    q = Q("gvq", 8, 16, groups=4, init="normal", restart_after=0)
    z = torch.randn(2, 8, 3, 3)
    idx = q.quantize(z)
    assert idx.shape == (2, 3, 3, 4) and q.num_codebooks == 4
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    for g, group in enumerate(q.groups):
        assert torch.equal(
            idx[..., g].reshape(-1), nearest_code(flat[:, 2 * g : 2 * g + 2], group.embedding.weight)
        )
    with pytest.raises(ValueError, match="divisor"):
        Q("gvq", 8, 16, groups=3)


# --- gumbel -----------------------------------------------------------------------------------------------
def test_gumbel_temperature_anneals_and_inference_is_hard() -> None:
    q = Q("gumbel", 4, 8, tau_start=1.0, tau_end=0.1, anneal_steps=10)
    assert q.temperature() == 1.0
    q.train()
    temps = []
    for _ in range(12):
        temps.append(float(q(torch.randn(2, 4, 2, 2)).stats["temperature"]))
    assert temps[0] == 1.0 and all(a > b for a, b in zip(temps[:10], temps[1:10]))
    assert math.isclose(q.temperature(), 0.1, rel_tol=1e-6)
    q.eval()
    z = torch.randn(2, 4, 2, 2)
    out = q(z)
    rows = q.embedding.weight[out.indices.reshape(-1)]
    torch.testing.assert_close(out.z_q.permute(0, 2, 3, 1).reshape(-1, 4), rows)


def test_gumbel_codes_start_on_the_first_batch_and_unused_ones_restart() -> None:
    """k-means init: after the first training batch every one of 8 separated clusters has its own code, as
    the argmax of inference picks it. A code no latent picks for ``restart_after`` steps starts again at a
    latent of the batch (its projection row and embedding both move)."""
    centres = torch.eye(8) * 4 + 1
    z = blobs(centres, per=20)
    q = Q("gumbel", 8, 8, restart_after=4).train()
    q.forward_flat(z)
    picked = q.eval().quantize_flat(z).reshape(8, 20)
    assert all(len(set(row.tolist())) == 1 for row in picked) and len(set(picked[:, 0].tolist())) == 8
    torch.testing.assert_close(q.embedding.weight[picked[:, 0]], centres, atol=0.05, rtol=0)
    # Only four of the clusters come any more: the other four codes go unused and restart onto them.
    q.train()
    before = q.proj.weight.detach().clone()
    for _ in range(8):
        q.forward_flat(z[:80])
    moved = (q.proj.weight.detach() - before).norm(dim=1) > 0.1
    assert int(q.upkeep.restarts) >= 4 and set(torch.nonzero(moved).flatten().tolist()) == set(
        picked[4:, 0].tolist()
    )
    # Without upkeep (the options older files load with) nothing of this exists.
    plain = Q("gumbel", 8, 8, init="random", restart_after=0)
    assert plain.upkeep is None and not any("upkeep" in k for k in plain.state_dict())
    with pytest.raises(ValueError, match="init must be"):
        Q("gumbel", 8, 8, init="uniform")


def test_code_stats_of_a_huge_codebook_do_not_allocate_a_histogram() -> None:
    """lfq with 40 bits has 2**40 codes: a histogram would need 4 TiB; the stats count what occurs."""
    q = Q("lfq", 40, None).eval()
    out = q(torch.randn(2, 40, 3, 3))
    assert out.stats["codes_used"].item() <= 18 and out.stats["perplexity"].item() >= 1
    small = code_stats(torch.tensor([0, 0, 1, 3]), 4)
    huge = code_stats(torch.tensor([0, 0, 1, 3]), 2**40)
    assert torch.equal(small["codes_used"], huge["codes_used"])
    torch.testing.assert_close(small["perplexity"], huge["perplexity"])
