"""Finding plugins: the entry-point group ``vqkit.plugins`` (built-ins included), ``--plugin MODULE_OR_FILE``
and the ``VQKIT_PLUGINS`` variable (comma- or os.pathsep-separated). A plugin that fails to import or to
register is recorded as broken with its error, and warned about once; the others still load."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from vqkit.errors import VQKitError
from vqkit.registry import Registries, origin

ENTRY_POINT_GROUP = "vqkit.plugins"
ENV_VAR = "VQKIT_PLUGINS"


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
    """An entry point may name a module (whose import registered) or a callable handed the registries."""
    if callable(obj) and not isinstance(obj, type(sys)):
        obj(Registries())


def _is_builtin(dist_name: str | None) -> bool:
    return dist_name is not None and dist_name.lower() == "vqkit"


def load_entry_points() -> None:
    found_builtin = False
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        if _is_builtin(dist_name):
            label, dist_label = "built-in", None
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
            with origin(label, dist_label):
                _run_loaded(ep.load())
        except Exception as exc:  # a broken plugin must not break the others
            _record_broken(f"{ep.name} ({ep.value}, from {dist_name or 'unknown distribution'})", exc)
    if not found_builtin:
        # Running from a source tree that was never installed: still offer the built-ins.
        for module in ("vqkit.plugins", "vqkit.exporters"):
            load_module(module, label="built-in", strict=False)


def _import_file(path: Path) -> Any:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    mod_name = f"vqkit_plugin_file_{path.stem}_{digest}"
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


def load_module(spec: str, *, label: str | None = None, strict: bool = True) -> None:
    """Load one plugin given as a module path (``my_pkg.plugin``) or a ``.py`` file.

    With ``strict`` a failure raises :class:`VQKitError` (the user named this plugin explicitly);
    otherwise it is recorded as broken.
    """
    spec = spec.strip()
    if not spec:
        return
    is_file = spec.endswith(".py") or os.sep in spec or "/" in spec
    key = f"file:{Path(spec).resolve()}" if is_file else f"module:{spec}"
    if key in _loaded_sources:
        return
    _loaded_sources.add(key)
    try:
        if is_file:
            path = Path(spec)
            if not path.is_file():
                raise FileNotFoundError(f"no such plugin file: {spec}")
            with origin(label or f"file {path}"):
                _run_loaded(_import_file(path))
        else:
            with origin(label or f"module {spec}"):
                module = importlib.import_module(spec)
                register = getattr(module, "register_plugins", None)
                if callable(register):
                    register(Registries())
    except Exception as exc:
        if strict:
            _loaded_sources.discard(key)
            raise VQKitError(f"plugin {spec} failed to load: {type(exc).__name__}: {exc}") from exc
        _record_broken(spec, exc)


def load_plugins(extra: list[str] | tuple[str, ...] = ()) -> None:
    """Load everything: entry points, then ``VQKIT_PLUGINS``, then requested and ``extra`` modules/files.
    Safe to call many times; each source loads once."""
    load_entry_points()
    env = os.environ.get(ENV_VAR, "")
    for item in env.replace(os.pathsep, ",").split(","):
        if item.strip():
            load_module(item, strict=False)
    for item in (*_requested, *extra):
        load_module(item, strict=True)
