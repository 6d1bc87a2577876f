"""Finding plugins: the entry-point group ``vqkit.plugins`` (built-ins included), ``--plugin MODULE_OR_PATH``
and the ``VQKIT_PLUGINS`` variable (comma- or os.pathsep-separated).

A plugin is a module, a ``.py`` file or a package folder whose import registers components (optionally
defining ``register_plugins(r)``), or a callable handed the registries (:class:`vqkit.registry.Registries`).
A plugin that fails to import or to register (``sys.exit()`` included) is recorded as broken with its error,
warned about once, and contributes nothing; the others still load.

The loading itself, and all its state, is :data:`vqkit.registry.loader` (a
:class:`vqkit.plugin_loader.PluginLoader`); this module holds the functions the rest of vqkit calls.
"""

from __future__ import annotations

import contextlib
import difflib

from vqkit.errors import UnknownComponentError
from vqkit.plugin_loader import (
    BUILTIN,
    ENTRY_POINT_GROUP,
    ENV_VAR,
    BrokenPlugin,
    PluginWarning,
    safe_distribution_name,
)
from vqkit.registry import REGISTRIES, Entry, loader

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "BrokenPlugin",
    "PluginWarning",
    "broken",
    "components",
    "find_components",
    "load_entry_points",
    "load_module",
    "load_plugins",
    "preserved_state",
    "request",
    "safe_distribution_name",
]

# The loader's own list (it is never replaced): the plugins that failed to load, in order.
broken: list[BrokenPlugin] = loader.broken


def request(specs: list[str] | tuple[str, ...], *, override: bool = False) -> None:
    """Remember plugins named by the user (``--plugin``); they load, strictly, with the next
    :func:`load_plugins` or registry lookup. Commands that never touch the registries (ONNX
    ``encode``/``decode``) thus never import torch. ``override``: their components replace registered ones
    of the same name (``--plugin-override``)."""
    loader.request(specs, override=override)


def load_plugins(
    extra: list[str] | tuple[str, ...] = (), *, strict: bool = True, override: bool = False
) -> None:
    """Load everything: entry points, then ``VQKIT_PLUGINS``, then requested (``--plugin``) and ``extra``
    modules, files or package folders. Safe to call many times; each source loads once. Registry lookups
    call this themselves; call it to load ``extra`` plugins or to see errors early.

    Plugins named explicitly (requested, ``extra``) raise :class:`vqkit.errors.PluginLoadError` if they fail,
    unless ``strict=False`` (``vqkit plugins`` lists them as broken instead). Entry points and
    ``VQKIT_PLUGINS`` never raise: a broken one is warned about and listed. ``override=True`` lets the
    components of ``extra`` replace registered ones of the same name.
    """
    loader.load(extra, strict=strict, override=override)


def load_module(spec: str, *, strict: bool = True, override: bool = False) -> None:
    """Load one plugin: a module (``my_pkg.plugin``, ``my_pkg.plugin:register``), a file or a folder."""
    loader.load_spec(spec, strict=strict, override=override)


def load_entry_points() -> None:
    loader.load_entry_points()


def preserved_state() -> contextlib.AbstractContextManager[None]:
    """Undo, on leaving the block, every registration and plugin load made inside it: for tests that
    register fake components or load fake plugins (``with preserved_state(): ...``)."""
    return loader.preserved()


def components(*, strict: bool = False) -> tuple[list[Entry], list[BrokenPlugin]]:
    """Every registered component (by kind, each sorted by name) after loading all plugins, and the plugins
    that failed to load. What ``vqkit plugins`` shows."""
    load_plugins(strict=strict)
    return [e for reg in REGISTRIES.values() for e in reg.entries()], list(broken)


def find_components(name: str, entries: list[Entry] | None = None) -> list[Entry]:
    """The components called ``name``, of any kind (``conv3`` is an encoder and a decoder)."""
    entries = components()[0] if entries is None else entries
    found = [e for e in entries if e.name == name]
    if not found:
        close = difflib.get_close_matches(name, sorted({e.name for e in entries}), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        failed = f" (plugins that failed to load: {', '.join(b.source for b in broken)})" if broken else ""
        raise UnknownComponentError(
            f"no plugin component named {name!r}.{hint} Run `vqkit plugins` to list them.{failed}"
        )
    return found
