from vqkit.plugins.quantizers import vq  # noqa: F401
