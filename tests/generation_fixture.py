"""A tiny VQ-VAE trained briefly on mnist5k, shared by test_prior.py and test_generate.py (trained once per
session: this module is imported once, so the cache is shared)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

import vqkit
from vqkit.data import load_mnist5k


@functools.lru_cache(maxsize=1)
def tiny_model_file() -> Path:
    """A small conv3 + vq model (4x4 grid, 32 codes) whose codes are not degenerate: the codebook is drawn from
    the encoder's outputs on digits and kept, with the encoder, as it is (a few dozen steps of full training
    collapse such a tiny model onto one code); a few dozen Adam steps fit the decoder to those codes."""
    torch.manual_seed(0)
    model = vqkit.build_model(
        "conv3",
        "vq",
        channels=1,
        latent_dim=8,
        codebook_size=32,
        encoder_options={"widths": (8, 16, 32)},
        decoder_options={"widths": (32, 16, 8)},
        seed=0,
    )
    images, _ = load_mnist5k("train")
    x = torch.from_numpy(images[:1024]).float() / 127.5 - 1.0
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z = model.encoder(x[:64]).permute(0, 2, 3, 1).reshape(-1, 8)
        model.quantizer.embedding.weight.copy_(z[torch.randperm(len(z), generator=gen)[:32]])
    opt = torch.optim.Adam(model.decoder.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        batch = x[torch.randint(len(x), (32,), generator=gen)]
        out = model(batch)
        opt.zero_grad()
        torch.nn.functional.mse_loss(out.reconstruction, batch).backward()
        opt.step()
    model.eval()
    path = Path(tempfile.mkdtemp(prefix="vqkit-gen-")) / "model.safetensors"
    vqkit.save(model, path)
    return path


def tiny_model() -> vqkit.VQVAE:
    return vqkit.load(tiny_model_file())


def held_out_images(n: int) -> torch.Tensor:
    images, _ = load_mnist5k("test")
    return torch.from_numpy(images[:n]).float() / 127.5 - 1.0
