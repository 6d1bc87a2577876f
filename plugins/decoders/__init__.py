from vqkit.plugins.decoders import conv3, resnet  # noqa: F401
