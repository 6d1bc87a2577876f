"""vqkit's built-in plugins. Importing this package registers them, exactly as a third party's would."""

from vqkit.plugins import decoders, encoders, objectives, quantizers, vqgan  # noqa: F401
