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
    pass


class ModelFileError(VQKitError):
    pass


class ShapeError(VQKitError, ValueError):
    pass
