"""Errors a user can cause. The CLI turns each into one line and a non-zero exit, never a traceback."""

from __future__ import annotations


class VQKitError(Exception):
    """A mistake in what the user asked for (bad name, option, file, shape). Its message is the whole story."""


class UnknownComponentError(VQKitError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateComponentError(VQKitError):
    """Two sources register different components under one name. ``clash`` names both sources; the
    message adds how to replace one on purpose, which depends on how the second one was registered."""

    def __init__(self, kind: str, name: str, first: str, second: str, hint: str = "") -> None:
        self.kind, self.name, self.first, self.second = kind, name, first, second
        self.clash = f"{kind} {name!r} is registered twice: by {first} and by {second}"
        super().__init__(f"{self.clash} ({hint})" if hint else self.clash)


class PluginLoadError(VQKitError):
    """A plugin the user named explicitly failed to load. ``source`` is the plugin as named, ``cause`` the
    error it raised (a :class:`DuplicateComponentError` when its names were taken)."""

    def __init__(self, source: str, cause: BaseException, message: str) -> None:
        self.source, self.cause = source, cause
        super().__init__(f"plugin {source} failed to load: {message}")


class OptionError(VQKitError):
    """A bad option value. ``param`` names the parameter (``lr``, ``latent_dim``) so that a front end can say it
    in its own terms (the CLI names the flag). ``source`` names the file the value came from (a config file),
    where the message names the field as that file spells it."""

    def __init__(self, message: str, *, param: str | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.source = source


class ModelFileError(VQKitError):
    pass


class ShapeError(VQKitError, ValueError):
    pass
