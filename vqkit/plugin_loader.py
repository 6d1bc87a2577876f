"""Loading plugins: one :class:`PluginLoader` finds them, imports each, and commits what each registered.

Registering a component only *marks* it (:meth:`PluginLoader.mark`). The loader collects the marks a plugin
makes while it loads and commits them together, with the origin it knows (``built-in``, ``pkg 1.0``,
``file x.py``), or drops them all if the plugin fails: a broken plugin contributes nothing. A plugin is
broken when importing or registering raises anything but KeyboardInterrupt (``sys.exit()`` included), or
when one of its names is already taken. Marks made outside any plugin load (a script registering its own
component, or importing a plugin before vqkit looks for plugins) wait for the next lookup: they go to the
entry point whose module made them, if there is one, else to their module.

This module knows nothing of vqkit's registries. A mark names the registry it goes to (anything with the
small :class:`Target` interface), and each registry asks its loader to load before every lookup, so a fresh
interpreter finds the built-ins without calling anything first.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from vqkit.errors import DuplicateComponentError, PluginLoadError

ENTRY_POINT_GROUP = "vqkit.plugins"
ENV_VAR = "VQKIT_PLUGINS"
BUILTIN = "built-in"
FILE_MODULE_PREFIX = "vqkit_plugin_file_"
# What a source tree that was never installed (no entry points) loads as its built-ins.
BUILTIN_MODULES = ("vqkit.plugins", "vqkit.exporters")

# PEP 508 project names; a version made of the characters PEP 440 versions use, minus anything a shell reads
# specially (an epoch's "!" is history expansion in bash): such a name can be shown as a pip command.
_PROJECT_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
_VERSION = re.compile(r"[0-9][A-Za-z0-9._+-]*")


def safe_distribution_name(text: object) -> str | None:
    """``text`` if it is a distribution name (``vqkit-plugin-example``) or a pinned one
    (``vqkit-plugin-example==0.1.0``) that is safe to print inside a ``pip install`` command, else None.

    Model files record the distribution of each component; a file someone hands you could hold any text
    there, so check it with this before showing it as a command."""
    if not isinstance(text, str) or len(text) > 200:
        return None
    name, sep, version = text.partition("==")
    if not _PROJECT_NAME.fullmatch(name) or (sep and not _VERSION.fullmatch(version)):
        return None
    return text


class PluginWarning(UserWarning):
    """A plugin failed to load and is skipped (the CLI shows it as one ``Warning:`` line)."""


@dataclass
class BrokenPlugin:
    source: str
    error: str
    spec: str | None = None  # the module or path, when the user named it for this command (--plugin)
    clash: bool = False  # it failed because one of its names was taken


class Target(Protocol):
    """What the loader needs of a registry."""

    kind: str

    def clash(self, name: str, obj: Any) -> str | None:
        """The origin of a different component already registered as ``name``, if any."""

    def commit(
        self, name: str, obj: Any, *, origin: str, distribution: str | None = None, override: bool = False
    ) -> Any: ...

    def snapshot(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...


@dataclass(frozen=True)
class Mark:
    """A registration not yet committed: ``obj`` goes into ``target`` as ``name``."""

    target: Target
    name: str
    obj: Any
    override: bool = False

    @property
    def module(self) -> str:
        return str(getattr(self.obj, "__module__", "") or "")


@dataclass(frozen=True)
class _Source:
    key: str  # each source loads once per process
    shown: str  # how messages name it
    origin: str  # what its components' origin says
    distribution: str | None  # "name==version" of the package that provides it
    owner: str | None  # module whose registrations made before it loaded (an early import) are its own
    load: Callable[[], Any]
    spec: str | None = None  # the module or path a user names it by; None for an entry point


class PluginLoader:
    """Finds plugins (the ``vqkit.plugins`` entry points, ``VQKIT_PLUGINS``, requested and named ones),
    loads each once, and keeps what is known about them: the broken ones and the marks not yet committed.

    ``handed`` is what a callable plugin is given (``vqkit.registry.Registries``).
    """

    def __init__(self, handed: Any = None) -> None:
        self.handed = handed
        self.broken: list[BrokenPlugin] = []  # one list for the life of the loader; callers may hold it
        self._targets: list[Target] = []
        self._loose: list[Mark] = []  # made outside any plugin load
        self._local = threading.local()  # per thread: the marks of each plugin it is loading right now
        self._loaded: set[str] = set()
        self._requested: list[tuple[str, bool]] = []
        self._retry: dict[str, list[Mark]] = {}  # what a plugin that imported but then failed registered
        self._scanned = False
        # _lock is held while loading (imports included); _loose_lock only around list updates, so a thread
        # that imports a plugin module while another loads can always record its marks (no deadlock).
        self._lock = threading.RLock()
        self._loose_lock = threading.Lock()

    # --- what registries call ---------------------------------------------------------------------------
    def attach(self, target: Target) -> None:
        """Count ``target`` among the registries :meth:`preserved` saves and restores."""
        self._targets.append(target)

    def mark(self, mark: Mark) -> None:
        batches = self._batches()
        if batches:
            batches[-1].append(mark)
        else:
            with self._loose_lock:
                self._loose.append(mark)

    def unmark(self, target: Target, name: str) -> None:
        with self._loose_lock:
            self._loose = [m for m in self._loose if not (m.target is target and m.name == name)]

    def ensure_loaded(self) -> None:
        """Load plugins if nothing was loaded yet or registrations are waiting. Not while a plugin loads:
        it sees what is there so far (the built-ins load first)."""
        if self._scanned and not self._loose:
            return
        if not self._batches():
            self.load()

    def _batches(self) -> list[list[Mark]]:
        if not hasattr(self._local, "batches"):
            self._local.batches = []
        return self._local.batches

    # --- loading ----------------------------------------------------------------------------------------
    def request(self, specs: Iterable[str], *, override: bool = False) -> None:
        """Remember plugins the user named; they load, strictly, with the next :meth:`load`."""
        with self._lock:
            self._requested.extend(
                (s, override) for s in specs if s.strip() and (s, override) not in self._requested
            )

    def load(self, extra: Iterable[str] = (), *, strict: bool = True, override: bool = False) -> None:
        """Entry points, then ``VQKIT_PLUGINS``, then requested plugins and ``extra``, then registrations
        made outside any plugin. Each source loads once. A requested or ``extra`` plugin that fails raises
        :class:`PluginLoadError`; without ``strict`` it is listed as broken, for the caller to show. Other
        plugins that fail are warned about and listed as broken. ``override`` lets the components of
        ``extra`` replace registered ones of the same name."""
        with self._lock:
            self.load_entry_points()
            for item in os.environ.get(ENV_VAR, "").replace(os.pathsep, ",").split(","):
                self.load_spec(item, strict=False)
            # A request is tried once: a failure is reported now, not again by every later load.
            requested, self._requested = self._requested, []
            for spec, replace in requested:
                self.load_spec(spec, strict=strict, override=replace, named=True)
            for spec in extra:
                self.load_spec(spec, strict=strict, override=override, named=True)
            while not self._batches():
                with self._loose_lock:
                    if not self._loose:
                        break
                    mark = self._loose.pop(0)
                try:
                    self._commit([mark], origin=f"module {mark.module}", distribution=None, override=False)
                except DuplicateComponentError as exc:  # the caller's own registration: an error it can fix
                    hint = "pass override=True to replace it on purpose"
                    raise DuplicateComponentError(exc.kind, exc.name, exc.first, exc.second, hint) from None

    def load_entry_points(self) -> None:
        """Every ``vqkit.plugins`` entry point: vqkit's own first (a third-party plugin that imports a built-in
        to subclass it must not take its origin), then the others by distribution name."""
        with self._lock:
            eps = sorted(
                metadata.entry_points(group=ENTRY_POINT_GROUP),
                key=lambda ep: (not _is_builtin(_dist_name(ep)), (_dist_name(ep) or "").lower(), ep.name),
            )
            for ep in eps:
                self._load(_entry_point_source(ep), strict=False, override=False)
            if not any(_is_builtin(_dist_name(ep)) for ep in eps):
                for module in BUILTIN_MODULES:  # a source tree that was never installed: still the built-ins
                    self.load_spec(module, origin=BUILTIN, strict=False)
            # Only now: a lookup in another thread must not take a half-loaded registry for a loaded one.
            self._scanned = True

    def load_spec(
        self,
        spec: str,
        *,
        origin: str | None = None,
        strict: bool = True,
        override: bool = False,
        named: bool = False,
    ) -> None:
        """One plugin named as a module (``my_pkg.plugin``; ``my_pkg.plugin:register`` for a callable), a
        ``.py`` file or a package folder (a path: it contains a ``/`` or ends in ``.py``).

        ``named``: the user named it for this call (``--plugin``); if it fails without ``strict``, the caller
        lists it (``vqkit plugins``), so there is no warning besides."""
        spec = spec.strip()
        if spec:
            with self._lock:
                self._load(_named_source(spec, origin), strict=strict, override=override, named=named)

    def _load(self, source: _Source, *, strict: bool, override: bool, named: bool = False) -> None:
        if source.key in self._loaded:
            return
        self._loaded.add(source.key)
        batches = self._batches()
        batches.append(self._retry.pop(source.key, []))
        imported = False
        try:
            try:
                plugin = source.load()
                imported = True
                _run_plugin(plugin, self.handed)
            finally:
                batch = batches.pop()
                # Also what its modules registered outside this load: imported earlier, or by another thread
                # meanwhile. Taken either way, so a plugin that fails contributes nothing.
                with self._loose_lock:
                    batch += [m for m in self._loose if _owns(source.owner, m.module)]
                    self._loose = [m for m in self._loose if not _owns(source.owner, m.module)]
            self._commit(batch, origin=source.origin, distribution=source.distribution, override=override)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: a plugin must not end the program
            if strict or named:
                self._loaded.discard(source.key)  # named again (maybe to override), it is tried again
                if imported:  # Python keeps the module: a retry would not see its registrations again
                    self._retry[source.key] = batch
            if strict:
                text = _describe(exc)
                if isinstance(exc, DuplicateComponentError):
                    text += " (pass override=True to let it replace the registered one)"
                raise PluginLoadError(source.shown, exc, text) from exc
            clash = isinstance(exc, DuplicateComponentError)
            self.broken.append(
                BrokenPlugin(source.shown, _describe(exc), source.spec if named else None, clash)
            )
            if not named:
                warnings.warn(
                    f"vqkit plugin {source.shown} failed to load and is skipped: {_describe(exc)}",
                    PluginWarning,
                    stacklevel=2,
                )

    def _commit(self, batch: list[Mark], *, origin: str, distribution: str | None, override: bool) -> None:
        """All of ``batch`` or, if one of its names is taken, none of it."""
        chosen: dict[tuple[int, str], Mark] = {}
        for m in batch:
            replace = override or m.override
            earlier = chosen.get((id(m.target), m.name))
            if earlier is not None and earlier.obj is not m.obj and not replace:
                raise DuplicateComponentError(m.target.kind, m.name, origin, origin)
            taken = None if replace else m.target.clash(m.name, m.obj)
            if taken is not None:
                raise DuplicateComponentError(m.target.kind, m.name, taken, origin)
            chosen[(id(m.target), m.name)] = m
        for m in chosen.values():
            m.target.commit(m.name, m.obj, origin=origin, distribution=distribution, override=True)

    # --- isolation for tests ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def preserved(self) -> Iterator[None]:
        """Undo, on leaving the block, every registration and plugin load made inside it (for tests that
        register fake components or load fake plugins). Plugin files loaded inside are forgotten too, so
        loading them again registers again."""
        with self._lock, self._loose_lock:
            state = (
                list(self._loose),
                set(self._loaded),
                list(self._requested),
                dict(self._retry),
                self._scanned,
            )
            tables = [(t, t.snapshot()) for t in self._targets]
            n_broken = len(self.broken)
            modules = {m for m in sys.modules if m.startswith(FILE_MODULE_PREFIX)}
        try:
            yield
        finally:
            with self._lock, self._loose_lock:
                self._loose, self._loaded, self._requested, self._retry, self._scanned = state
                for target, table in tables:
                    target.restore(table)
                del self.broken[n_broken:]
                for name in [m for m in sys.modules if m.startswith(FILE_MODULE_PREFIX) and m not in modules]:
                    del sys.modules[name]


# --- sources ------------------------------------------------------------------------------------------------
def _is_builtin(dist_name: str | None) -> bool:
    return dist_name is not None and dist_name.lower() == "vqkit"


def _dist_name(ep: metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _entry_point_source(ep: metadata.EntryPoint) -> _Source:
    dist = getattr(ep, "dist", None)
    name = _dist_name(ep)
    if _is_builtin(name):
        origin, pinned = BUILTIN, None
    elif dist is not None:
        origin, pinned = f"{name} {dist.version}", f"{name}=={dist.version}"
    else:
        origin, pinned = f"entry point {ep.name}", None
    where = f"{name} {dist.version}" if dist is not None else "no distribution"
    return _Source(
        key=f"ep:{ep.name}={ep.value}",
        shown=f"{ep.name} ({ep.value}, from {where})",
        origin=origin,
        distribution=pinned,
        owner=ep.module,
        load=ep.load,
    )


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or "/" in spec


def _named_source(spec: str, origin: str | None) -> _Source:
    if _is_path(spec):
        path = Path(spec)
        label = f"folder {spec}" if path.is_dir() else f"file {spec}"
        return _Source(
            key=f"file:{path.resolve()}",
            shown=spec,
            origin=origin or label,
            distribution=None,
            owner=None,
            load=lambda: _import_path(path),
            spec=spec,
        )
    module, _, attr = spec.partition(":")
    return _Source(
        key=f"module:{spec}",
        shown=spec,
        origin=origin or f"module {module}",
        distribution=None,
        owner=module,
        load=lambda: _import_attribute(module, attr),
        spec=spec,
    )


def _owns(owner: str | None, module: str) -> bool:
    return owner is not None and (module == owner or module.startswith(owner + "."))


def _import_attribute(module_name: str, attr: str) -> Any:
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name.split(".")[0] and Path(module_name).is_dir():
            raise ModuleNotFoundError(
                f"{exc}; to load the folder {module_name} instead, give it as a path: ./{module_name}",
                name=exc.name,
            ) from exc
        raise
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def _import_path(path: Path) -> types.ModuleType:
    """Import a ``.py`` file, or a folder holding ``__init__.py`` as a package (its modules import each other
    relatively: ``from . import layers``). The module name is stable and unique per path: loading the same
    path twice is one import, and two files with the same name do not collide."""
    if path.is_dir():
        if not (path / "__init__.py").is_file():
            raise ImportError(f"{path} is a folder without __init__.py; a plugin folder must be a package")
        file, search = path / "__init__.py", [str(path)]
    elif path.is_file():
        file, search = path, None
    else:
        raise FileNotFoundError(f"no such plugin file or folder: {path}")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    name = f"{FILE_MODULE_PREFIX}{re.sub(r'[^0-9A-Za-z_]', '_', resolved.stem)}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    if search is None:
        spec = importlib.util.spec_from_file_location(name, file)
    else:
        spec = importlib.util.spec_from_file_location(name, file, submodule_search_locations=search)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[loaded]
        raise
    return module


def _run_plugin(obj: Any, handed: Any) -> None:
    """A module has registered by being imported (and may define ``register_plugins(r)`` for the rest); any
    other callable is handed the registries."""
    if isinstance(obj, types.ModuleType):
        register = getattr(obj, "register_plugins", None)
        if callable(register):
            register(handed)
    elif callable(obj):
        obj(handed)
    else:
        raise TypeError(f"a plugin must be a module or a callable taking the registries, got {obj!r}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DuplicateComponentError):
        return exc.clash
    if isinstance(exc, SystemExit):
        return f"SystemExit: it called sys.exit({exc.code!r}) while loading"
    return f"{type(exc).__name__}: {exc}"
