"""An example vqkit plugin. Importing this package registers its components (the entry point in
pyproject.toml names it, so ``vqkit`` imports it when it looks for plugins)."""

from vqkit_plugin_example.decoder import TinyDecoder
from vqkit_plugin_example.encoder import TinyEncoder
from vqkit_plugin_example.quantizer import ExampleVQ

__all__ = ["ExampleVQ", "TinyDecoder", "TinyEncoder"]
__version__ = "0.1.0"
