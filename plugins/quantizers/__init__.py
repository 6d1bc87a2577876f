"""The built-in quantizers; importing a module registers it."""

from vqkit.plugins.quantizers import cosine, ema, fsq, gumbel, gvq, lfq, rvq, simvq, vq  # noqa: F401
