"""The plugin's own tests: vqkit's conformance checks, and the entry point that makes vqkit find it."""

from __future__ import annotations

from vqkit_plugin_example import ExampleVQ, TinyDecoder, TinyEncoder

import vqkit
from vqkit.testing import check_decoder, check_encoder, check_quantizer


def test_tiny_encoder_conforms() -> None:
    check_encoder(TinyEncoder, latent_dim=8, width=16)


def test_tiny_decoder_conforms() -> None:
    check_decoder(TinyDecoder, latent_dim=8, width=16)


def test_example_vq_conforms() -> None:
    check_quantizer(ExampleVQ, dim=8, codebook_size=32)


def test_vqkit_finds_the_plugin_through_its_entry_point() -> None:
    vqkit.load_plugins()
    for registry, name in (
        (vqkit.encoders, "tiny"),
        (vqkit.quantizers, "example-vq"),
        (vqkit.decoders, "tiny"),
    ):
        assert registry.entry(name).distribution == "vqkit-plugin-example==0.1.0"
    model = vqkit.build_model("tiny", "example-vq", channels=1, image_size=32, seed=0)
    assert model.grid == (8, 8) and model.spec.origins["quantizer"] == "vqkit-plugin-example==0.1.0"
