from vqkit.plugins.decoders import conv3  # noqa: F401
