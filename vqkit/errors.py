"""Errors a user can cause. The CLI turns each into one line and a non-zero exit, never a traceback."""

from __future__ import annotations


class VQKitError(Exception):
    """A mistake in what the user asked for (bad name, option, file, shape). Its message is the whole story."""


class UnknownComponentError(VQKitError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateComponentError(VQKitError):
    pass


class OptionError(VQKitError):
    """A bad option value. ``param`` names the parameter (``lr``, ``latent_dim``) so that a front end can say it
    in its own terms (the CLI names the flag)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelFileError(VQKitError):
    pass


class ShapeError(VQKitError, ValueError):
    pass
