from vqkit.plugins.encoders import conv3  # noqa: F401
