"""The resnet encoder and its mirror decoder: option combinations pass the conformance kit with ONNX export
parity, the pair trains, the output stays in range without saturating, and bad options are one clear line."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import vqkit
from vqkit.data import load_mnist5k
from vqkit.errors import OptionError
from vqkit.objectives import decoder_last_layer
from vqkit.registry import decoders, encoders
from vqkit.testing import check_decoder, check_encoder

vqkit.load_plugins()

# Sampled so that together they cover every downsample factor, attention on and off, zero/one/two blocks,
# per-level block counts and two GroupNorm group counts; narrow widths keep the export fast.
COMBOS: list[dict[str, Any]] = [
    {"downsample": 2, "widths": (8,), "blocks": 0, "attention": False, "norm_groups": 4},
    {"downsample": 4, "widths": (8, 16), "blocks": (1, 2), "attention": True, "norm_groups": 4},
    {"downsample": 16, "widths": (8, 8, 16, 16), "blocks": 1, "attention": True, "norm_groups": 8},
]


@pytest.mark.parametrize("options", COMBOS, ids=lambda o: f"downsample{o['downsample']}")
def test_option_combinations_conform_with_onnx_parity(options: dict[str, Any]) -> None:
    check_encoder(encoders.get("resnet"), latent_dim=8, onnx=True, **options)
    grid = 32 // options["downsample"]
    check_decoder(decoders.get("resnet"), latent_dim=8, grid=grid, onnx=True, **options)


def test_downsample_8_with_attention_conforms_at_default_widths() -> None:
    """The default layout (the one `vqkit train --encoder resnet` builds) passes the kit as it is."""
    check_encoder(encoders.get("resnet"), latent_dim=8, onnx=False, downsample=8, attention=True)
    check_decoder(decoders.get("resnet"), latent_dim=8, grid=4, onnx=False, downsample=8, attention=True)


@pytest.mark.parametrize("downsample", [2, 4, 8, 16])
def test_the_pair_gives_the_grid_the_downsample_asks_for(downsample: int) -> None:
    opts = {"downsample": downsample, "widths": (16,) * int(np.log2(downsample))}
    model = vqkit.build_model(
        "resnet", "vq", channels=3, image_size=32, encoder_options=opts, decoder_options=opts
    )
    assert model.grid == (32 // downsample, 32 // downsample)
    assert model.decoder.upsample == downsample
    assert model.bits_per_image == (32 // downsample) ** 2 * 9


def test_resnet_trains_on_mnist5k() -> None:
    images, _ = load_mnist5k("train")
    x = torch.from_numpy(images[:256]).float().div(127.5).sub(1)
    opts = {"downsample": 4, "widths": (16, 32)}
    torch.manual_seed(0)
    model = vqkit.build_model(
        "resnet", "vq", channels=1, image_size=32, encoder_options=opts, decoder_options=opts, seed=0
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for step in range(40):
        batch = x[(step * 32) % 256 :][:32]
        out = model(batch)
        loss = torch.nn.functional.mse_loss(out.reconstruction, batch) + out.quantized.loss
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(torch.nn.functional.mse_loss(model(x[:64]).reconstruction, x[:64]).detach()) < 0.5 * first


def test_output_is_clamped_and_gradients_pass_the_clamp() -> None:
    dec = decoders.get("resnet")(8, 3, downsample=2, widths=(8,), norm_groups=4)
    with torch.no_grad():
        dec.net[-1][1].bias.fill_(5.0)  # push every pixel far past the range
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    dec.train()
    y = dec(z)
    assert float(y.detach().max()) <= 1.0 and float(y.detach().min()) >= -1.0
    y.sum().backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0  # a Tanh or a hard clamp would give 0 here
    z.grad = None
    (-dec(z)).sum().backward()  # a loss that wants every pixel brighter still: nothing left to push
    assert float(z.grad.abs().sum()) == 0
    dec.eval()
    assert float(dec(z).detach().max()) == 1.0


def test_the_decoders_last_layer_is_its_output_convolution() -> None:
    dec = decoders.get("resnet")(8, 3, downsample=4, widths=(8, 16), norm_groups=4)
    last = decoder_last_layer(dec)
    assert last is not None and last.shape == (3, 8, 3, 3)
    assert any(last is p for p in dec.parameters())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"downsample": 3}, "downsample must be one of 2, 4, 8, 16, got 3"),
        ({"downsample": 4, "widths": (16, 32, 64)}, "widths needs one channel count per level (2 for"),
        ({"blocks": (1, 2)}, "blocks needs one count per level (3 for downsample 8)"),
        ({"widths": (12, 24, 48), "norm_groups": 8}, "widths must be positive multiples of norm_groups=8"),
        ({"blocks": -1}, "blocks must be counts >= 0"),
    ],
)
def test_bad_options_are_one_clear_line(options: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionError) as err:
        vqkit.build_model("resnet", encoder_options=options, decoder_options=options)
    text = str(err.value)
    assert "encoder 'resnet' rejected its settings" in text and message in text and "\n" not in text
