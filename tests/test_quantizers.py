"""One module over every registered quantizer: the contract a user (and the exported graphs) rely on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vqkit.discovery import load_plugins
from vqkit.registry import quantizers

load_plugins()
# The built-ins; third-party quantizers get the conformance kit (vqkit.testing), not these stricter checks.
NAMES = [e.name for e in quantizers.entries() if e.origin == "built-in"]


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    return quantizers.get(name)(None, None)


def latents(q: nn.Module, b: int = 4, h: int = 4, w: int = 4, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, q.dim, h, w, generator=g)


def warm_up(q: nn.Module, steps: int = 3) -> None:
    """A few training forwards, so k-means init, EMA and schedules have state worth checking."""
    q.train()
    for i in range(steps):
        q(latents(q, b=8, seed=10 + i))


def codes_shape(q: nn.Module, b: int, h: int, w: int) -> tuple[int, ...]:
    s = int(getattr(q, "num_codebooks", 1))
    return (b, h, w) if s == 1 else (b, h, w, s)


def test_the_family_is_registered() -> None:
    assert {"vq", "ema", "cosine", "fsq", "lfq", "rvq", "gvq", "gumbel", "simvq"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_dtypes_loss_and_stats(name: str) -> None:
    q = make(name)
    z = latents(q, b=2, h=3, w=5)
    out = q(z)
    assert out.z_q.shape == z.shape and out.z_q.dtype == z.dtype
    assert out.indices.shape == codes_shape(q, 2, 3, 5) and out.indices.dtype == torch.int64
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < q.codebook_size
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    for key in ("perplexity", "codes_used"):
        assert out.stats[key].dim() == 0
    assert 1 <= float(out.stats["perplexity"]) <= float(out.stats["codes_used"]) + 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_the_encoder(name: str) -> None:
    q = make(name)
    encoder = nn.Conv2d(3, q.dim, kernel_size=1)
    x = torch.randn(4, 3, 4, 4)
    out = q(encoder(x))
    target = torch.randn_like(out.z_q)
    ((out.z_q - target) ** 2).mean().add(out.loss).backward()
    grad = encoder.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_eval_quantize_is_pure_and_matches_forward(name: str) -> None:
    q = make(name)
    warm_up(q)
    q.eval()
    z = latents(q, seed=99)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    with torch.no_grad():
        out = q(z)
        idx = q.quantize(z)
        again = q.quantize(z)
        zq = q.dequantize(idx)
    assert idx.dtype == torch.int64 and idx.shape == codes_shape(q, 4, 4, 4)
    assert torch.equal(idx, again)
    assert torch.equal(idx, out.indices)
    torch.testing.assert_close(zq, out.z_q, rtol=1e-5, atol=1e-5)
    after = q.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "eval forward/quantize changed the state"


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    q = make(name)
    warm_up(q)
    q.eval()
    fresh = quantizers.get(name)(None, None)
    fresh.load_state_dict(q.state_dict())
    fresh.eval()
    z = latents(q, seed=5)
    idx = q.quantize(z)
    assert torch.equal(fresh.quantize(z), idx)
    torch.testing.assert_close(fresh.dequantize(idx), q.dequantize(idx), rtol=0, atol=0)
    # A loaded quantizer keeps its trained codebook: training again must not re-run k-means over it.
    fresh.train()
    fresh(z)
    fresh.eval()
    if hasattr(fresh, "upkeep"):
        assert bool(fresh.upkeep.initialised)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_searches_in_fp32(name: str) -> None:
    q = make(name)
    warm_up(q)
    z = latents(q, seed=7).to(torch.bfloat16)
    q.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    assert torch.isfinite(out.z_q.float()).all() and torch.isfinite(out.loss)
    q.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        idx = q.quantize(z)
    # Same codes as the fp32 path on the same (bf16-valued) latents: nothing is searched or rounded in bf16.
    assert torch.equal(idx, q.quantize(z.float()))


def test_ddp_ranks_end_with_the_same_codebook_state(tmp_path) -> None:
    """Two gloo processes on different shards: k-means init, EMA statistics and dead-code restarts (which
    change codebooks outside the optimiser, and which DDP itself does not sync) agree on every rank.
    Grouped VQ with EMA codebooks exercises all three on two codebooks at once."""
    from vqkit.training import TrainConfig, run_ddp_cpu

    options = {"ema": True, "restart_after": 1}
    model = {"quantizer": "gvq", "quantizer_options": options, "codebook_size": 64}
    config = TrainConfig(
        model=model, steps=3, batch_size=8, log_every=3, eval_every=0, eval_images=8, checkpoint_every=0,
        out=str(tmp_path / "run"),
    )  # fmt: skip
    states = run_ddp_cpu(config, world_size=2)
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    restarts = [v for k, v in states[0].items() if k.endswith("upkeep.restarts")]
    assert restarts and sum(int(r) for r in restarts) > 0, "the test must exercise restarts"


CODEBOOK_KINDS = ["vq", "ema", "cosine", "simvq"]


@pytest.mark.parametrize("composite", ["rvq", "gvq"])
@pytest.mark.parametrize("kind", CODEBOOK_KINDS)
def test_rvq_and_gvq_stack_any_codebook_kind(composite: str, kind: str) -> None:
    torch.manual_seed(0)
    q = quantizers.get(composite)(8, 16, codebook=kind)
    parts = q.stages if composite == "rvq" else q.groups
    assert all(type(p) is quantizers.get(kind) for p in parts)
    warm_up(q)
    q.eval()
    z = latents(q, seed=3)
    with torch.no_grad():
        out = q(z)
        idx = q.quantize(z)
    assert idx.shape == codes_shape(q, 4, 4, 4) and torch.equal(idx, out.indices)
    torch.testing.assert_close(q.dequantize(idx), out.z_q, rtol=1e-5, atol=1e-5)


def test_codebook_ema_is_the_older_ema_flag() -> None:
    torch.manual_seed(0)
    old = quantizers.get("rvq")(8, 16, ema=True)
    torch.manual_seed(0)
    new = quantizers.get("rvq")(8, 16, codebook="ema")
    assert old.state_dict().keys() == new.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    with pytest.raises(ValueError, match="codebook must be one of .*cosine"):
        quantizers.get("gvq")(8, 16, codebook="fsq")
    with pytest.raises(ValueError, match="set only codebook"):
        quantizers.get("gvq")(8, 16, ema=True, codebook="cosine")


def test_one_stage_rvq_gives_single_codebook_codes() -> None:
    """With one codebook the contract's codes are [B, h, w], which the model's decode accepts."""
    q = quantizers.get("rvq")(8, 16, stages=1).eval()
    z = latents(q)
    idx = q.quantize(z)
    assert idx.shape == (4, 4, 4) and q(z).indices.shape == (4, 4, 4)
    assert q.dequantize(idx).shape == z.shape


def test_every_built_in_quantizer_shares_the_layout_base() -> None:
    from vqkit.codebook import Codebook, FlatQuantizer

    assert all(issubclass(quantizers.get(n), FlatQuantizer) for n in NAMES)
    assert all(issubclass(quantizers.get(n), Codebook) for n in CODEBOOK_KINDS)
