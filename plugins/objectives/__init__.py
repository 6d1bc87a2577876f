"""Built-in training objectives. Importing this package registers them, exactly as a third party's would."""

from vqkit.plugins.objectives import lpips, patchgan, pixel, ssim  # noqa: F401
