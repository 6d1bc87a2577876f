"""The VQGAN family of taming-transformers and diffusers: encoder, decoder and quantizer built so that
published weights load one to one, and the importers that turn a published model into a vqkit model file.
Importing this package registers them."""

from vqkit.plugins.vqgan import diffusers_format, networks, quantizer, taming_format  # noqa: F401
