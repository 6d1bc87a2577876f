"""Published VQGANs come in one to one: a diffusers VQModel folder and a taming-transformers checkpoint with
its YAML config, built here at small sizes with random weights by the projects' own code, are imported and
give the same codes and (clamped) reconstructions as the originals on the same images; the imported model
then evaluates, reconstructs, fine-tunes, exports with parity and runs in the torch-free runtime. A pickled
checkpoint that would run code is refused with one line and runs nothing."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_run import run
from torch import nn

import vqkit
from vqkit.data import load_mnist5k
from vqkit.errors import ModelFileError
from vqkit.export import export
from vqkit.importing import SOURCE_KEY, import_model
from vqkit.runtime import Tokenizer
from vqkit.safeunpickle import RefusedCheckpoint

pytestmark = pytest.mark.usefixtures("one_thread")

yaml = pytest.importorskip("yaml", reason="the taming configs are YAML (pip install pyyaml)")


def _digits(n: int, channels: int, split: str = "test") -> torch.Tensor:
    x = torch.from_numpy(load_mnist5k(split)[0][:n]).float() / 127.5 - 1
    return x.repeat(1, channels, 1, 1)


def _spread_codebook(embedding: torch.Tensor, latents: torch.Tensor) -> None:
    """Codes drawn from the model's own latents, so that images use many of them (a random codebook far
    from the latents would give every position the same code and prove little)."""
    rows = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))[: embedding.shape[0]]
    with torch.no_grad():
        embedding.copy_(rows[pick] + 0.01 * torch.randn_like(rows[pick]))


# --- diffusers ---------------------------------------------------------------------------------------------
def _diffusers_folder(folder: Path, channels: int = 1, mid_attention: bool = True) -> Any:
    diffusers = pytest.importorskip("diffusers", reason="needs diffusers (pip install diffusers)")
    torch.manual_seed(0)
    model = diffusers.VQModel(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=8,
        vq_embed_dim=4,
        num_vq_embeddings=64,
        norm_num_groups=8,
        sample_size=32,
        mid_block_add_attention=mid_attention,
    ).eval()
    with torch.no_grad():
        _spread_codebook(model.quantize.embedding.weight, model.encode(_digits(8, channels, "train")).latents)
    model.save_pretrained(folder)
    return model


@torch.no_grad()
def _diffusers_reference(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    latents = model.encode(x).latents
    b, d, h, w = latents.shape
    codes = model.quantize(latents)[2][2].reshape(b, h, w)
    # decoded from the codes, as a tokenizer's user decodes them (codebook rows, not z + (e - z))
    quant = model.quantize.get_codebook_entry(codes.reshape(-1), (b, h, w, d))
    return codes, model.decode(quant, force_not_quantize=True).sample


@pytest.mark.parametrize("mid_attention", [True, False])
def test_a_diffusers_vqmodel_gives_the_same_codes_and_images(tmp_path: Path, mid_attention: bool) -> None:
    original = _diffusers_folder(tmp_path / "vq", mid_attention=mid_attention)
    model = import_model(tmp_path / "vq", tmp_path / "m.safetensors")
    x = _digits(16, 1)
    codes, images = _diffusers_reference(original, x)
    assert torch.equal(model.encode(x), codes) and codes.unique().numel() > 8
    assert (model.decode(codes) - images.clamp(-1, 1)).abs().max() <= 1e-5
    # The file holds the same model and says where it came from.
    again = vqkit.load(tmp_path / "m.safetensors")
    assert torch.equal(again.encode(x), codes)
    source = json.loads(vqkit.read_spec(tmp_path / "m.safetensors")[1][SOURCE_KEY])
    assert source["format"] == "diffusers VQModel" and source["config"]["num_vq_embeddings"] == 64


def test_an_imported_model_evaluates_fine_tunes_exports_and_runs_without_torch(tmp_path: Path) -> None:
    original = _diffusers_folder(tmp_path / "vq")
    code, text = run("import", str(tmp_path / "vq"), "-o", str(tmp_path / "m.safetensors"))
    assert code == 0 and "vqgan" in text, text
    path = str(tmp_path / "m.safetensors")
    # a pretrained codebook is fine-tuned as it is (never k-means fitted again nor re-seeded), with its own loss
    options = vqkit.load(path).resolved_options["quantizer"]
    assert (options["init"], options["restart_after"], options["legacy"]) == ("uniform", 0, True)
    code, text = run("eval", path, "--data", "mnist5k", "--limit", "32", "-o", str(tmp_path / "e.json"))
    assert code == 0 and json.loads((tmp_path / "e.json").read_text())["psnr"] > 0, text
    code, text = run("reconstruct", path, str(_png(tmp_path)), "-o", str(tmp_path / "grid.png"))
    assert code == 0 and (tmp_path / "grid.png").is_file(), text
    code, text = run(
        "train", "--model", path, "--steps", "2", "--batch-size", "8", "--eval-images", "8",
        "-o", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0 and (tmp_path / "run" / "model.safetensors").is_file(), text
    report = export(path, tmp_path / "tok", num_images=32)
    assert report.parity is not None and report.parity.passed, report.parity.format()
    pixels = load_mnist5k("test")[0][:16].transpose(0, 2, 3, 1)  # uint8 [B, H, W, 1], as an app holds them
    codes, _ = _diffusers_reference(original, _digits(16, 1))
    assert np.array_equal(Tokenizer(tmp_path / "tok").encode(pixels), codes.numpy())


def _png(tmp_path: Path) -> Path:
    from vqkit.images import write_images

    write_images(load_mnist5k("test")[0][:2], tmp_path / "pngs")
    return tmp_path / "pngs"


def test_diffusers_configs_outside_the_vqgan_layout_are_refused_naming_the_field(tmp_path: Path) -> None:
    _diffusers_folder(tmp_path / "vq")
    config = json.loads((tmp_path / "vq" / "config.json").read_text())
    for key, value in (("norm_type", "spatial"), ("num_vq_embeddings", 32), ("layers_per_block", 2)):
        (tmp_path / "vq" / "config.json").write_text(json.dumps({**config, key: value}))
        code, text = run("import", str(tmp_path / "vq"), "-o", str(tmp_path / "m.safetensors"))
        assert code == 1 and len(text.strip().splitlines()) == 1 and key in text, text
    assert not (tmp_path / "m.safetensors").exists()


# --- taming-transformers -----------------------------------------------------------------------------------
def _taming() -> tuple[Any, Any]:
    model = pytest.importorskip(
        "taming.modules.diffusionmodules.model", reason="needs taming-transformers (see .ci/run)"
    )
    quantize = pytest.importorskip("taming.modules.vqvae.quantize", reason="needs taming-transformers")
    return model, quantize


DDCONFIG = {
    "double_z": False, "z_channels": 8, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [16], "dropout": 0.0,
}  # fmt: skip


class TamingVQModel(nn.Module):
    """taming.models.vqgan.VQModel's modules, names and encode/decode, built from taming's own classes; the
    class itself derives from a Lightning release that does not import beside this torch."""

    def __init__(self, n_embed: int, embed_dim: int, remap: str | None) -> None:
        super().__init__()
        model, quantize = _taming()
        self.encoder = model.Encoder(**DDCONFIG)
        self.decoder = model.Decoder(**DDCONFIG)
        self.quantize = quantize.VectorQuantizer2(
            n_embed, embed_dim, beta=0.25, remap=remap, sane_index_shape=True
        )
        self.quant_conv = nn.Conv2d(DDCONFIG["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, DDCONFIG["z_channels"], 1)

    @torch.no_grad()
    def codes_and_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.quant_conv(self.encoder(x))
        b, d, h, w = latents.shape
        _, _, (_, _, codes) = self.quantize(latents)
        # decoded from the codes, as taming's decode_code does (codebook rows, not z + (e - z))
        quant = self.quantize.get_codebook_entry(codes.reshape(-1), (b, h, w, d))
        return codes, self.decoder(self.post_quant_conv(quant))


def _taming_config(tmp_path: Path, remap: Path | None = None) -> Path:
    params = {"embed_dim": 4, "n_embed": 64, "ddconfig": DDCONFIG,
              "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"}}  # fmt: skip
    if remap is not None:
        params["remap"] = str(remap)
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump({"model": {"target": "taming.models.vqgan.VQModel", "params": params}}))
    return config


def _lightning_checkpoint(path: Path, state: dict[str, torch.Tensor], extra: Any = None) -> Path:
    """A Lightning checkpoint's shape: training state beside the weights."""
    torch.save({"epoch": 3, "state_dict": state, "optimizer_states": [{"state": {}}],
                "hparams": argparse.Namespace(lr=4.5e-6), "extra": extra}, path)  # fmt: skip
    return path


def _taming_files(tmp_path: Path, remap: bool = False) -> tuple[TamingVQModel, Path, Path]:
    used = tmp_path / "used.npy"
    np.save(used, np.arange(64)[::-1].copy())  # every code, in another order: remap changes each code
    torch.manual_seed(0)
    original = TamingVQModel(64, 4, str(used) if remap else None).eval()
    with torch.no_grad():
        latents = original.quant_conv(original.encoder(_digits(8, 3, "train")))
        _spread_codebook(original.quantize.embedding.weight, latents)
    state = {**original.state_dict(), "loss.discriminator.main.0.weight": torch.zeros(2, 3, 4, 4)}
    ckpt = _lightning_checkpoint(tmp_path / "last.ckpt", state)
    return original, ckpt, _taming_config(tmp_path, used if remap else None)


@pytest.mark.parametrize("remap", [False, True])
def test_a_taming_checkpoint_gives_the_same_codes_and_images(tmp_path: Path, remap: bool) -> None:
    original, ckpt, config = _taming_files(tmp_path, remap)
    (tmp_path / "used.npy").unlink()  # the config's remap file is never opened: the codes are in the weights
    code, text = run("import", str(ckpt), "--config", str(config), "-o", str(tmp_path / "m.safetensors"))
    assert code == 0, text
    model = vqkit.load(tmp_path / "m.safetensors")
    x = _digits(16, 3)
    codes, images = original.codes_and_images(x)
    assert torch.equal(model.encode(x), codes) and codes.unique().numel() > 8
    assert (model.decode(codes) - images.clamp(-1, 1)).abs().max() <= 1e-5
    source = json.loads(vqkit.read_spec(tmp_path / "m.safetensors")[1][SOURCE_KEY])
    assert source["checkpoint"] == "last.ckpt" and source["tensors_left_out"] == 1
    if remap:  # the remapping exports too: the runtime gives taming's codes
        report = export(tmp_path / "m.safetensors", tmp_path / "tok", num_images=16)
        assert report.parity is not None and report.parity.passed, report.parity.format()
        assert np.array_equal(Tokenizer(tmp_path / "tok").encode(x.numpy()), codes.numpy())


@pytest.mark.parametrize("legacy", [True, False])
def test_the_quantizer_loss_keeps_tamings_beta_form(legacy: bool) -> None:
    _, quantize = _taming()
    theirs = quantize.VectorQuantizer2(16, 4, beta=0.25, legacy=legacy)
    ours = vqkit.registry.quantizers.get("vqgan")(4, 16, legacy=legacy, init="uniform", restart_after=0)
    ours.embedding.weight.data.copy_(theirs.embedding.weight.data.normal_())
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    zq, loss, (_, _, codes) = theirs(z)
    mine = ours(z)
    assert torch.equal(mine.indices.reshape(-1), codes.reshape(-1)) and torch.allclose(mine.loss, loss)
    # the beta form decides which gradient reaches the codebook
    (g_theirs,) = torch.autograd.grad(loss, theirs.embedding.weight)
    (g_ours,) = torch.autograd.grad(mine.loss, ours.embedding.weight)
    assert torch.allclose(g_ours, g_theirs)


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    ckpt = _lightning_checkpoint(tmp_path / "last.ckpt", {"encoder.conv_in.bias": torch.zeros(32)}, Payload())
    config = _taming_config(tmp_path)
    code, text = run("import", str(ckpt), "--config", str(config), "-o", str(tmp_path / "m.safetensors"))
    assert code == 1 and len(text.strip().splitlines()) == 1, text
    assert "refused" in text and "system" in text and "nothing of it was run" in text
    with pytest.raises(RefusedCheckpoint):
        import_model(ckpt, config=config)
    assert not marker.exists() and not (tmp_path / "m.safetensors").exists()


def test_a_config_that_does_not_fit_the_weights_names_its_field(tmp_path: Path) -> None:
    _, ckpt, config = _taming_files(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["model"]["params"]["n_embed"] = 32
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelFileError, match="n_embed.*quantizer.embedding.weight is \\[64, 4\\]"):
        import_model(ckpt, config=config)
    data["model"]["target"] = "taming.models.vqgan.GumbelVQ"
    config.write_text(yaml.safe_dump(data))
    code, text = run("import", str(ckpt), "--config", str(config), "-o", str(tmp_path / "m.safetensors"))
    assert code == 1 and "field target" in text and "GumbelVQ" in text, text


def test_remapped_codes_follow_taming_for_latents_whose_row_is_unused(tmp_path: Path) -> None:
    _, quantize = _taming()
    used = np.array([5, 2, 9, 0])
    np.save(tmp_path / "used.npy", used)
    theirs = quantize.VectorQuantizer2(
        16, 4, beta=0.25, remap=str(tmp_path / "used.npy"), unknown_index="extra", sane_index_shape=True
    )
    ours = vqkit.registry.quantizers.get("vqgan")(4, 16, remap_used=4, unknown_index="extra")
    ours.used.copy_(torch.from_numpy(used))
    ours.embedding.weight.data.copy_(theirs.embedding.weight.data.normal_())
    z = torch.randn(2, 4, 5, 5)
    codes = theirs(z)[2][2]
    assert torch.equal(ours.quantize(z), codes) and (codes == 4).any()  # rows outside used: the extra code
    b, d, h, w = z.shape
    assert torch.equal(ours.dequantize(codes), theirs.get_codebook_entry(codes.reshape(-1), (b, h, w, d)))
    # taming draws a random code for those; here they take the nearest used row instead (exportable)
    ours.unknown_index = "random"
    rows = theirs.embedding.weight[torch.from_numpy(used)]
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    nearest = torch.cdist(flat, rows).argmin(-1).reshape(b, h, w)
    assert torch.equal(ours.quantize(z), nearest)


def test_training_state_reads_as_data_and_every_other_callable_is_refused(tmp_path: Path) -> None:
    import collections
    import functools

    from vqkit.safeunpickle import load_checkpoint

    state = {"w": torch.ones(2)}
    kept = {"state_dict": state, "loops": collections.defaultdict(list, {"a": [1]}), "path": Path("/x")}
    torch.save(kept, tmp_path / "ok.ckpt")
    assert torch.equal(load_checkpoint(tmp_path / "ok.ckpt")["state_dict"]["w"], state["w"])
    for payload in (functools.partial(print, "ran"), eval):
        torch.save({"state_dict": state, "hook": payload}, tmp_path / "bad.ckpt")
        with pytest.raises(RefusedCheckpoint, match="refused"):
            load_checkpoint(tmp_path / "bad.ckpt")
