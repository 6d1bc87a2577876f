"""Objectives: the spelling of a loss, the weighted combination the training loop calls, the built-ins
(mse, l1, ssim, lpips from a weight file, patchgan with its own optimizer), a third party's objective by name,
exact resumption of a discriminator, and replicas that stay equal under DDP."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import vqkit
from vqkit.data import load_mnist5k
from vqkit.errors import OptionError, VQKitError
from vqkit.objectives import Objective, build_loss, decoder_last_layer, parse_loss
from vqkit.registry import objectives

vqkit.load_plugins()


def _digits(n: int = 16, start: int = 0) -> torch.Tensor:
    images, _ = load_mnist5k("train")
    return torch.from_numpy(images[start : start + n]).float().div(127.5).sub(1.0)


# --- spelling and combination --------------------------------------------------------------------------------
def test_mse_is_exactly_the_models_reconstruction_loss() -> None:
    x = _digits()
    recon = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    loss = build_loss("mse")
    total, terms = loss(x, recon, step=0, last_layer=None)
    assert torch.equal(total, F.mse_loss(recon.float(), x.float()))
    assert loss.spec == "mse" and set(terms) == {"mse"} and not terms["mse"].requires_grad
    assert total.requires_grad and total.dtype == torch.float32


def test_terms_are_weighted_and_the_spelling_is_canonical() -> None:
    assert parse_loss("l1+lpips:0.1+patchgan(start=500,lr=1e-4):0.1") == [
        ("l1", 1.0, {}),
        ("lpips", 0.1, {}),
        ("patchgan", 0.1, {"start": 500, "lr": 1e-4}),
    ]
    loss = build_loss(" l1 + ssim:0.50 ")
    assert loss.spec == "l1+ssim:0.5"
    x = _digits()
    recon = x.flip(-1)
    total, terms = loss(x, recon, step=0, last_layer=None)
    expected = F.l1_loss(recon, x) + 0.5 * terms["ssim"]
    assert torch.allclose(total, expected) and float(terms["ssim"]) > 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("l1+patchgn", "unknown objective 'patchgn'. Did you mean 'patchgan'?"),
        ("l1:-1", "weight of 'l1' must be a finite number >= 0, got -1"),
        ("l1:nan", "weight of 'l1' must be a finite number >= 0, got nan"),
        ("l1:inf", "weight of 'l1' must be a finite number >= 0"),
        ("l1:heavy", "weight 'heavy' of 'l1' is not a number"),
        ("l1+l1:0.5", "objective 'l1' appears twice"),
        ("", "loss must name at least one objective"),
        ("l1++ssim", "cannot read term ''"),
        ("l1 ssim", "cannot read term 'l1 ssim'"),
        ("ssim(window=4)", "objective 'ssim' rejected its settings: window must be a positive odd number"),
        ("ssim(windw=5)", "objective 'ssim' has no option 'windw'. Did you mean 'window'?"),
        ("patchgan(start)", "option 'start' of 'patchgan' is not KEY=VALUE"),
    ],
)
def test_bad_losses_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(VQKitError) as err:
        build_loss(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_options_for_an_objective_not_in_the_loss_are_refused() -> None:
    with pytest.raises(
        OptionError, match="options given for objective 'patchgan', which is not in loss 'l1'"
    ):
        build_loss("l1", {"patchgan": {"start": 10}})
    assert build_loss("patchgan", {"patchgan": {"start": 10}}).objectives["patchgan"].start == 10


def test_a_third_party_objective_is_used_by_name() -> None:
    class Charbonnier(Objective):
        """A smooth L1 (a third party's objective)."""

        def __init__(self, eps: float = 1e-3) -> None:
            super().__init__()
            self.eps = eps

        def forward(self, x, recon, *, step, last_layer):  # noqa: ANN001, ANN201
            return torch.sqrt((recon.float() - x.float()) ** 2 + self.eps**2).mean()

    objectives.add("charbonnier", Charbonnier)
    try:
        loss = build_loss("mse+charbonnier:2", {"charbonnier": {"eps": 0.5}})
        x = _digits()
        total, terms = loss(x, torch.zeros_like(x), step=0, last_layer=None)
        expected = F.mse_loss(torch.zeros_like(x), x) + 2 * torch.sqrt(x**2 + 0.25).mean()
        assert torch.allclose(total, expected) and set(terms) == {"mse", "charbonnier"}
    finally:
        objectives.remove("charbonnier")


def test_the_decoders_last_layer_is_found() -> None:
    model = vqkit.build_model("conv3", channels=1, image_size=32)
    assert decoder_last_layer(model.decoder) is model.decoder.net[-1].weight
    assert decoder_last_layer(nn.Identity()) is None


# --- ssim ---------------------------------------------------------------------------------------------------
def test_ssim_of_flat_images_is_the_closed_form_and_of_equal_images_is_one() -> None:
    ssim = objectives.get("ssim")()
    a, b = torch.full((2, 3, 16, 16), -0.5), torch.full((2, 3, 16, 16), 0.5)  # 0.25 and 0.75 on [0, 1]
    c1 = 0.01**2
    closed = (2 * 0.25 * 0.75 + c1) / (0.25**2 + 0.75**2 + c1)  # no variance: the structure term is 1
    assert math.isclose(1 - float(ssim(a, b, step=0, last_layer=None)), closed, rel_tol=1e-3)
    x = _digits(4)
    assert abs(float(ssim(x, x, step=0, last_layer=None))) < 1e-6
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    assert 0.05 < float(ssim(x, noisy, step=0, last_layer=None)) < 1


# --- lpips ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weight file of the right names and shapes with random values, written by the real writer."""
    from vqkit.plugins.objectives.lpips import expected_shapes, save_lpips_weights

    gen = torch.Generator().manual_seed(0)
    shapes = expected_shapes()
    vgg = {k: torch.randn(s, generator=gen) * 0.05 for k, s in shapes.items() if k.startswith("features.")}
    lin = {f"lin{k}.model.1.weight": torch.rand(shapes[f"lin.{k}.weight"], generator=gen) for k in range(5)}
    return save_lpips_weights(vgg, lin, tmp_path_factory.mktemp("lpips") / "w.safetensors")


def test_lpips_loads_a_weight_file_and_is_a_frozen_distance(lpips_file: Path) -> None:
    loss = build_loss("l1+lpips:0.1", {"lpips": {"weights": str(lpips_file)}})
    lp = loss.objectives["lpips"]
    x = _digits(4)  # gray: repeated to three channels
    assert float(lp.distance(x, x).abs().max()) < 1e-6
    recon = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    total, terms = loss(x, recon, step=0, last_layer=None)
    assert float(terms["lpips"]) > 0
    total.backward()
    assert recon.grad is not None and float(recon.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in lp.parameters())
    loss.train()
    assert not lp.training  # frozen: stays in evaluation mode
    assert loss.training_state() == {}  # nothing of it is checkpointed


def test_lpips_is_found_in_the_torch_hub_cache_and_reported_by_eval(
    lpips_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from vqkit.evaluate import evaluate
    from vqkit.plugins.objectives.lpips import default_weights_path

    model = vqkit.build_model("conv3", channels=1, image_size=32, seed=0)
    images = load_mnist5k("test")[0][:8]
    assert "lpips" not in evaluate(model, images)
    with pytest.raises(VQKitError, match=r"LPIPS weights not found at .*lpips_vgg16.safetensors: put a"):
        build_loss("lpips")
    path = default_weights_path()
    assert path == tmp_path / "hub" / "checkpoints" / "lpips_vgg16.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(lpips_file.read_bytes())
    build_loss("lpips")
    report = evaluate(model, images)
    assert report["lpips"] > 0 and 0 < report["ssim"] < 1


def test_lpips_weight_files_of_the_wrong_shape_or_format_are_one_line(tmp_path: Path) -> None:
    from vqkit.plugins.objectives.lpips import expected_shapes

    shapes = expected_shapes()
    wrong = {k: torch.zeros(s) for k, s in shapes.items()}
    wrong["lin.2.weight"] = torch.zeros(1, 128, 1, 1)
    save_file(wrong, str(tmp_path / "shape.safetensors"))
    missing = {k: v for k, v in wrong.items() if k != "features.0.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    (tmp_path / "text.safetensors").write_text("not weights at all")
    cases = {
        "shape": "tensor lin.2.weight has shape [1, 128, 1, 1], expected [1, 256, 1, 1]",
        "missing": "is not an LPIPS VGG16 weight file: missing features.0.bias",
        "text": "is not a readable safetensors file",
    }
    for name, message in cases.items():
        with pytest.raises(VQKitError) as err:
            build_loss("lpips", {"lpips": {"weights": str(tmp_path / f"{name}.safetensors")}})
        assert message in str(err.value) and "\n" not in str(err.value), name


# --- patchgan ----------------------------------------------------------------------------------------------------
class TinyDecoder(nn.Module):
    """Latents -> images with a last layer, standing in for a model's decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(4, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.body(z)))


SMALL_GAN = {"width": 8, "layers": 2, "ramp": 2}


def _gan_steps(loss, dec, opt, steps: range, latents: torch.Tensor, x: torch.Tensor) -> dict:  # noqa: ANN001
    stats = {}
    for step in steps:
        recon = dec(latents)
        total, _ = loss(x, recon, step=step, last_layer=decoder_last_layer(dec))
        opt.zero_grad()
        total.backward()
        opt.step()
        stats = loss.update(x, recon.detach(), step=step)
    return stats


def test_patchgan_is_silent_before_its_start_then_trains_its_own_discriminator() -> None:
    torch.manual_seed(0)
    dec, x, latents = TinyDecoder(), _digits(8), torch.randn(8, 4, 32, 32)
    loss = build_loss("l1+patchgan:0.5", {"patchgan": {"start": 2, **SMALL_GAN}})
    gan = loss.objectives["patchgan"]
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    _gan_steps(loss, dec, opt, range(1), latents, x)
    before = {k: v.clone() for k, v in gan.net.state_dict().items()}
    recon = dec(latents)
    total, terms = loss(x, recon, step=1, last_layer=decoder_last_layer(dec))
    assert float(terms["patchgan"]) == 0 and torch.equal(total, F.l1_loss(recon, x))
    stats = loss.update(x, recon.detach(), step=1)
    assert float(stats["patchgan.d_loss"]) == 0
    assert all(torch.equal(v, gan.net.state_dict()[k]) for k, v in before.items())
    stats = _gan_steps(loss, dec, opt, range(2, 4), latents, x)
    assert float(stats["patchgan.d_loss"]) > 0
    assert any(
        not torch.equal(v, gan.net.state_dict()[k]) for k, v in before.items() if v.is_floating_point()
    )


def test_the_adaptive_weight_balances_gradients_at_the_last_layer() -> None:
    torch.manual_seed(0)
    dec, x, latents = TinyDecoder(), _digits(8), torch.randn(8, 4, 32, 32)
    loss = build_loss("l1+patchgan:0.5", {"patchgan": {"start": 0, **SMALL_GAN, "ramp": 0}})
    last = decoder_last_layer(dec)
    recon = dec(latents)
    total, terms = loss(x, recon, step=0, last_layer=last)
    gan = loss.objectives["patchgan"]
    # the same ratio, computed by hand from fresh graphs
    (g_rec,) = torch.autograd.grad(F.l1_loss(dec(latents), x), last)
    (g_gan,) = torch.autograd.grad(gan(x, dec(latents), step=0, last_layer=last), last)
    weight = float((g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, 1e4))
    assert math.isclose(
        float(total.detach()), float(terms["l1"]) + 0.5 * weight * float(terms["patchgan"]), rel_tol=1e-5
    )
    total.backward()
    # the generator term reaches the decoder, never the discriminator's weights
    assert last.grad is not None and all(p.grad is None for p in gan.net.parameters())
    assert math.isclose(
        float(loss.update(x, recon.detach(), step=0)["patchgan.adaptive_weight"]), weight, rel_tol=1e-5
    )


def test_the_term_ramps_in_after_the_start_while_the_discriminator_learns() -> None:
    torch.manual_seed(0)
    dec, x, latents = TinyDecoder(), _digits(8), torch.randn(8, 4, 32, 32)
    loss = build_loss("l1+patchgan:0.5", {"patchgan": {"start": 2, "ramp": 4, "width": 8, "layers": 2}})
    gan = loss.objectives["patchgan"]
    assert [gan.weight_at(s) for s in (0, 1, 2, 3, 4, 6, 9)] == [0, 0, 0, 0.25, 0.5, 1, 1]
    last = decoder_last_layer(dec)
    for step in (2, 4):
        recon = dec(latents)
        total, terms = loss(x, recon, step=step, last_layer=last)
        stats = loss.update(x, recon.detach(), step=step)
        assert float(stats["patchgan.d_loss"]) > 0  # the discriminator trains from the start step on
        scale = float(stats["patchgan.adaptive_weight"])
        expected = float(terms["l1"]) + 0.5 * gan.weight_at(step) * scale * float(terms["patchgan"])
        assert math.isclose(float(total.detach()), expected, rel_tol=1e-5), step


def test_an_interrupted_and_resumed_run_ends_exactly_like_an_uninterrupted_one() -> None:
    x, latents = _digits(8), torch.randn(8, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    options = {"patchgan": {"start": 1, **SMALL_GAN}}

    def fresh():  # noqa: ANN202
        torch.manual_seed(0)
        dec = TinyDecoder()
        return dec, torch.optim.Adam(dec.parameters(), lr=1e-3), build_loss("l1+patchgan:0.5", options)

    dec, opt, loss = fresh()
    _gan_steps(loss, dec, opt, range(6), latents, x)
    straight = loss.training_state()

    dec, opt, loss = fresh()
    _gan_steps(loss, dec, opt, range(3), latents, x)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(
            {"dec": dec.state_dict(), "opt": opt.state_dict(), "loss": loss.training_state()}, f"{tmp}/s.pt"
        )
        saved = torch.load(f"{tmp}/s.pt", weights_only=True)
    dec, opt, loss = fresh()
    dec.load_state_dict(saved["dec"])
    opt.load_state_dict(saved["opt"])
    loss.load_training_state(saved["loss"])
    _gan_steps(loss, dec, opt, range(3, 6), latents, x)
    resumed = loss.training_state()

    for k, v in straight["patchgan"]["discriminator"].items():
        assert torch.equal(v, resumed["patchgan"]["discriminator"][k]), k
    a, b = straight["patchgan"]["optimizer"]["state"], resumed["patchgan"]["optimizer"]["state"]
    assert a.keys() == b.keys()
    for i in a:
        for k in a[i]:
            assert torch.equal(a[i][k], b[i][k]), (i, k)


def test_a_training_state_from_another_loss_or_discriminator_is_refused() -> None:
    x = _digits(8)
    loss = build_loss("l1+patchgan", {"patchgan": {"start": 0, **SMALL_GAN}})
    loss.update(x, x, step=0)
    with pytest.raises(VQKitError, match="nothing for objective 'patchgan'"):
        build_loss("l1+patchgan").load_training_state({})
    other = build_loss("l1+patchgan", {"patchgan": {"start": 0, "width": 16, "layers": 2}})
    other.load_training_state(loss.training_state())
    with pytest.raises(VQKitError, match="saved discriminator does not match this one"):
        other.update(x, x, step=0)


def test_patchgan_says_when_images_are_too_small_for_its_layers() -> None:
    loss = build_loss("patchgan(start=0)")
    with pytest.raises(VQKitError, match="needs images of at least 24x24, got 16x16; use fewer layers"):
        loss.update(torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 16), step=0)


def _ddp_worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        loss = build_loss("patchgan", {"patchgan": {"start": 0, **SMALL_GAN}})
        x = _digits(8, start=8 * rank)  # each rank sees different images
        for step in range(3):
            loss.update(x, x.flip(-1), step=step)
        state = loss.training_state()["patchgan"]["discriminator"]
        torch.save({k: v.contiguous() for k, v in state.items()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_discriminator_replicas_stay_equal_under_ddp(tmp_path: Path) -> None:
    mp.start_processes(
        _ddp_worker, args=(2, str(tmp_path / "rdv"), str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    alone = build_loss("patchgan", {"patchgan": {"start": 0, **SMALL_GAN}})
    alone.update(_digits(8), _digits(8).flip(-1), step=0)
    moved = False
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k
        moved |= v.is_floating_point() and not np.allclose(
            v.numpy(), alone.training_state()["patchgan"]["discriminator"][k].numpy()
        )
    assert moved


def _tensors_equal(a: object, b: object, where: str = "") -> None:
    """Nested dicts/lists of tensors and Python scalars are equal, bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _tensors_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _tensors_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_the_training_loop_resumes_a_gan_run_exactly(tmp_path: Path, one_thread: None) -> None:
    """vqkit's loop with l1+patchgan: a run stopped by Ctrl-C and resumed ends with the same model weights and
    the same discriminator and discriminator optimizer as an uninterrupted one."""
    import os
    import signal

    from vqkit.training import TrainConfig, train
    from vqkit.training.checkpoint import state_path_for

    common = dict(
        steps=8,
        batch_size=16,
        log_every=4,
        eval_every=0,
        eval_images=16,
        checkpoint_every=4,
        loss="l1+patchgan:0.1",
        loss_options={"patchgan": {"start": 2, **SMALL_GAN}},
        progress=False,
    )
    full = train(TrainConfig(**common, out=str(tmp_path / "full")))

    def ctrl_c_at_step_4(step: int, model: object) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    cut = train(TrainConfig(**common, out=str(tmp_path / "cut")), callback=ctrl_c_at_step_4)
    assert cut.interrupted and cut.step == 4
    model_file = tmp_path / "cut" / "model.safetensors"
    train(TrainConfig(**common, init_from=str(model_file), resume=True))
    resumed, reference = vqkit.load(model_file).state_dict(), vqkit.load(full.model_path).state_dict()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    states = [torch.load(state_path_for(p), weights_only=True) for p in (model_file, full.model_path)]
    assert states[0]["objectives"]["patchgan"]["discriminator"]  # the discriminator was checkpointed
    _tensors_equal(states[0]["objectives"], states[1]["objectives"], "objectives")
