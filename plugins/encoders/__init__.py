from vqkit.plugins.encoders import conv3, resnet  # noqa: F401
