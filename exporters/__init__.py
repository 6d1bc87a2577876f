"""vqkit's built-in exporters."""
