"""Generation over a trained VQ-VAE's codes: a causal-transformer prior (:mod:`.prior`), its trainer
(:mod:`.training`), and sampling and latent interpolation (:mod:`.sampling`)."""

from __future__ import annotations

from vqkit.generation.prior import CodePrior, PriorSpec, load_prior, save_prior
from vqkit.generation.sampling import interpolate, sample_codes, sample_images, uniform_codes
from vqkit.generation.training import PriorTrainConfig, PriorTrainResult, train_prior

__all__ = [
    "CodePrior",
    "PriorSpec",
    "PriorTrainConfig",
    "PriorTrainResult",
    "interpolate",
    "load_prior",
    "sample_codes",
    "sample_images",
    "save_prior",
    "train_prior",
    "uniform_codes",
]
