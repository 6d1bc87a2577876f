"""vqkit's built-in exporters. Importing this package registers them, exactly as a third party's would."""

from vqkit.exporters import onnx  # noqa: F401
