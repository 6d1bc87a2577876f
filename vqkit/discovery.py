"""Finding plugins: the entry-point group ``vqkit.plugins`` (built-ins included), ``--plugin MODULE_OR_FILE``
and the ``VQKIT_PLUGINS`` variable (comma- or os.pathsep-separated).

A plugin is a module whose import registers components (optionally defining ``register_plugins(r)``), or a
callable handed the registries (:class:`vqkit.registry.Registries`). A plugin that fails to import or to
register is recorded as broken with its error, warned about once, and contributes nothing (what it
registered before failing is taken back); the others still load.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import os
import sys
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from vqkit.errors import UnknownComponentError, VQKitError
from vqkit.registry import REGISTRIES, Entry, Registries, _broken_note, origin

ENTRY_POINT_GROUP = "vqkit.plugins"
ENV_VAR = "VQKIT_PLUGINS"
BUILTIN = "built-in"
_FILE_MODULE_PREFIX = "vqkit_plugin_file_"


class PluginWarning(UserWarning):
    pass


@dataclass
class BrokenPlugin:
    source: str
    error: str


_loaded_sources: set[str] = set()
_requested: list[str] = []
broken: list[BrokenPlugin] = []


def request(specs: list[str] | tuple[str, ...]) -> None:
    """Remember plugins named by the user (``--plugin``); they load, strictly, with the next
    :func:`load_plugins`. Commands that never touch the registries (ONNX ``encode``/``decode``) thus never
    import torch."""
    _requested.extend(s for s in specs if s not in _requested)


def _record_broken(source: str, exc: BaseException) -> None:
    message = f"{type(exc).__name__}: {exc}"
    broken.append(BrokenPlugin(source, message))
    warnings.warn(
        f"vqkit plugin {source} failed to load and is skipped: {message}", PluginWarning, stacklevel=3
    )


def _run_loaded(obj: Any) -> None:
    """A module has registered by being imported (and may define ``register_plugins(r)`` for the rest);
    any other callable is handed the registries."""
    if isinstance(obj, types.ModuleType):
        register = getattr(obj, "register_plugins", None)
        if callable(register):
            register(Registries())
    elif callable(obj):
        obj(Registries())
    else:
        raise TypeError(f"a plugin must be a module or a callable taking the registries, got {obj!r}")


@contextlib.contextmanager
def _all_or_nothing() -> Iterator[None]:
    """Take back whatever a plugin registered if it then fails, so a broken plugin contributes nothing."""
    before = {kind: dict(reg._entries) for kind, reg in REGISTRIES.items()}
    try:
        yield
    except BaseException:
        for kind, reg in REGISTRIES.items():
            reg._entries.clear()
            reg._entries.update(before[kind])
        raise


def _claim(module: str, label: str, distribution: str | None) -> None:
    """Attribute to this plugin the components its modules registered when imported outside discovery
    (``import my_plugin`` before :func:`load_plugins`): their origin should still name the package."""
    for reg in REGISTRIES.values():
        for entry in reg._entries.values():
            if entry.inferred and (entry.module == module or entry.module.startswith(module + ".")):
                entry.origin, entry.distribution, entry.inferred = label, distribution, False


def _is_builtin(dist_name: str | None) -> bool:
    return dist_name is not None and dist_name.lower() == "vqkit"


def _dist_name(ep: metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def load_entry_points() -> None:
    """Load every ``vqkit.plugins`` entry point: vqkit's own first (so a third-party plugin that imports a
    built-in to subclass it cannot take its origin), then the others in a fixed order."""
    eps = sorted(
        metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (not _is_builtin(_dist_name(ep)), (_dist_name(ep) or "").lower(), ep.name),
    )
    found_builtin = False
    for ep in eps:
        dist = getattr(ep, "dist", None)
        dist_name = _dist_name(ep)
        if _is_builtin(dist_name):
            label, dist_label = BUILTIN, None
            found_builtin = True
        elif dist is not None:
            label, dist_label = f"{dist_name} {dist.version}", f"{dist_name}=={dist.version}"
        else:
            label, dist_label = f"entry point {ep.name}", None
        key = f"ep:{ep.name}={ep.value}"
        if key in _loaded_sources:
            continue
        _loaded_sources.add(key)
        try:
            with _all_or_nothing(), origin(label, dist_label):
                _run_loaded(ep.load())
            _claim(ep.module, label, dist_label)
        except Exception as exc:  # a broken plugin must not break the others
            where = f"{dist_name} {dist.version}" if dist is not None else "no distribution"
            _record_broken(f"{ep.name} ({ep.value}, from {where})", exc)
    if not found_builtin:
        # Running from a source tree that was never installed: still offer the built-ins.
        for module in ("vqkit.plugins", "vqkit.exporters"):
            load_module(module, label=BUILTIN, strict=False)


def _import_file(path: Path) -> types.ModuleType:
    # A stable, unique module name per file: loading the same file twice is one import, and two files
    # with the same stem do not collide.
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    mod_name = f"{_FILE_MODULE_PREFIX}{path.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    return module


def _is_file_spec(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or "/" in spec


def load_module(spec: str, *, label: str | None = None, strict: bool = True) -> None:
    """Load one plugin given as a module path (``my_pkg.plugin``, or ``my_pkg.plugin:register`` for a
    callable) or a ``.py`` file.

    With ``strict`` a failure raises :class:`VQKitError` (the user named this plugin explicitly);
    otherwise it is recorded as broken and warned about.
    """
    spec = spec.strip()
    if not spec:
        return
    is_file = _is_file_spec(spec)
    key = f"file:{Path(spec).resolve()}" if is_file else f"module:{spec}"
    if key in _loaded_sources:
        return
    _loaded_sources.add(key)
    try:
        if is_file:
            path = Path(spec)
            if not path.is_file():
                raise FileNotFoundError(f"no such plugin file: {spec}")
            label = label or f"file {spec}"
            with _all_or_nothing(), origin(label):
                _run_loaded(_import_file(path))
        else:
            module_name, _, attr = spec.partition(":")
            label = label or f"module {module_name}"
            with _all_or_nothing(), origin(label):
                obj: Any = importlib.import_module(module_name)
                for part in filter(None, attr.split(".")):
                    obj = getattr(obj, part)
                _run_loaded(obj)
            _claim(module_name, label, None)
    except Exception as exc:
        if strict:
            _loaded_sources.discard(key)
            raise VQKitError(f"plugin {spec} failed to load: {type(exc).__name__}: {exc}") from exc
        _record_broken(spec, exc)


def load_plugins(extra: list[str] | tuple[str, ...] = (), *, strict: bool = True) -> None:
    """Load everything: entry points, then ``VQKIT_PLUGINS``, then requested (``--plugin``) and ``extra``
    modules/files. Safe to call many times; each source loads once.

    Plugins named explicitly (requested, ``extra``) raise :class:`VQKitError` if they fail, unless
    ``strict=False`` (``vqkit plugins`` lists them as broken instead). Entry points and ``VQKIT_PLUGINS`` never
    raise: a broken one is warned about and listed.
    """
    load_entry_points()
    env = os.environ.get(ENV_VAR, "")
    for item in env.replace(os.pathsep, ",").split(","):
        if item.strip():
            load_module(item, strict=False)
    # A request is tried once: a failure is reported now, not again by every later load_plugins().
    requested = list(_requested)
    _requested.clear()
    for item in (*requested, *extra):
        load_module(item, strict=strict)


@contextlib.contextmanager
def preserved_state() -> Iterator[None]:
    """Undo, on leaving the block, every registration and plugin load made inside it.

    For tests that register fake components or load fake plugins: nothing leaks into later tests.
    Plugin files loaded inside the block are forgotten too, so loading them again re-registers.
    """
    entries = {kind: dict(reg._entries) for kind, reg in REGISTRIES.items()}
    sources, requested, n_broken = set(_loaded_sources), list(_requested), len(broken)
    file_modules = {m for m in sys.modules if m.startswith(_FILE_MODULE_PREFIX)}
    try:
        yield
    finally:
        for kind, reg in REGISTRIES.items():
            reg._entries.clear()
            reg._entries.update(entries[kind])
        _loaded_sources.clear()
        _loaded_sources.update(sources)
        _requested[:] = requested
        del broken[n_broken:]
        for name in [m for m in sys.modules if m.startswith(_FILE_MODULE_PREFIX) and m not in file_modules]:
            del sys.modules[name]


def components(*, strict: bool = False) -> tuple[list[Entry], list[BrokenPlugin]]:
    """Every registered component (encoders, quantizers, decoders, exporters, each sorted by name) after
    loading all plugins, and the plugins that failed to load. What ``vqkit plugins`` shows."""
    load_plugins(strict=strict)
    return [e for reg in REGISTRIES.values() for e in reg.entries()], list(broken)


def find_components(name: str, entries: list[Entry] | None = None) -> list[Entry]:
    """The components called ``name``, of any kind (``conv3`` is an encoder and a decoder)."""
    entries = components()[0] if entries is None else entries
    found = [e for e in entries if e.name == name]
    if not found:
        close = difflib.get_close_matches(name, sorted({e.name for e in entries}), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownComponentError(
            f"no plugin component named {name!r}.{hint} Run `vqkit plugins` to list them.{_broken_note()}"
        )
    return found
