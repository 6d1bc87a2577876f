"""One small registry per kind of component: a decorator to register, a lookup that names the closest
matches, and a listing. Built-ins and third-party plugins go through exactly the same path.

Registering marks a component; :data:`loader` (a :class:`~vqkit.plugin_loader.PluginLoader`) commits it with
its origin when the plugin that made it has loaded. Every lookup and listing first lets the loader load the
plugins (once), so ``quantizers.get("vq")`` works in a fresh interpreter without any set-up call.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vqkit.errors import DuplicateComponentError, UnknownComponentError
from vqkit.plugin_loader import Mark, PluginLoader


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    annotation: str
    required: bool

    def describe(self) -> str:
        if self.required:
            return f"{self.name} (required)"
        return f"{self.name}={self.default!r}"


@dataclass
class Entry:
    kind: str
    name: str
    obj: Callable[..., Any]
    origin: str
    distribution: str | None = None
    options: list[Option] = field(default_factory=list)
    accepts_any: bool = False

    @property
    def module(self) -> str:
        return str(getattr(self.obj, "__module__", "") or "")

    @property
    def summary(self) -> str:
        """The docstring's first sentence, on one line (docstrings wrap their first paragraph)."""
        paragraph = " ".join((inspect.getdoc(self.obj) or "").strip().split("\n\n")[0].split())
        end = paragraph.find(". ")
        return paragraph[: end + 1] if end >= 0 else paragraph

    @property
    def details(self) -> str:
        """The docstring beyond its first sentence."""
        doc = (inspect.getdoc(self.obj) or "").strip()
        head = self.summary
        flat = " ".join(doc.split())
        return flat[len(head) :].strip() if flat.startswith(head) else doc

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "origin": self.origin,
            "distribution": self.distribution,
            "module": self.module,
            "summary": self.summary,
            "options": {o.name: (None if o.required else _jsonable(o.default)) for o in self.options},
            "required": [o.name for o in self.options if o.required],
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


def signature_options(obj: Callable[..., Any], positional: tuple[str, ...]) -> tuple[list[Option], bool]:
    """The keyword options of a component's constructor, leaving out the contract arguments the builder
    passes itself. Returns (options, accepts_any_keyword)."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    sig = inspect.signature(target)
    options: list[Option] = []
    accepts_any = False
    for p in sig.parameters.values():
        if p.name in ("self", *positional):
            continue
        if p.kind is p.VAR_KEYWORD:
            accepts_any = True
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        annotation = "" if p.annotation is p.empty else str(p.annotation)
        required = p.default is p.empty
        options.append(Option(p.name, None if required else p.default, annotation, required))
    return options, accepts_any


class Registry:
    """Components of one kind (``encoder``, ``quantizer``, ``decoder``, ``objective``, ``exporter``) by name.

    ``positional`` names the constructor arguments the builder supplies; everything else in the
    constructor's signature is an option a user may set. With a ``loader``, registrations wait for it to
    commit them and lookups load plugins first; without one (a registry of your own) they take effect at once.
    """

    def __init__(
        self, kind: str, positional: tuple[str, ...] = (), *, loader: PluginLoader | None = None
    ) -> None:
        self.kind = kind
        self.positional = positional
        self.loader = loader
        self._entries: dict[str, Entry] = {}
        if loader is not None:
            loader.attach(self)

    # --- registering ------------------------------------------------------------------------------------
    def register(
        self, name: str | None = None, *, override: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@quantizers.register("vq")``."""

        def decorate(obj: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name or obj.__name__.lower(), obj, override=override)
            return obj

        return decorate

    def add(self, name: str, obj: Callable[..., Any], *, override: bool = False) -> None:
        """Register ``obj`` as ``name`` (``override=True`` replaces a component of that name on purpose)."""
        if self.loader is None:
            self.commit(name, obj, origin=f"module {getattr(obj, '__module__', '?')}", override=override)
        else:
            self.loader.mark(Mark(self, name, obj, override))

    def commit(
        self,
        name: str,
        obj: Callable[..., Any],
        *,
        origin: str,
        distribution: str | None = None,
        override: bool = False,
    ) -> Entry:
        """Put ``obj`` in the registry now, from ``origin``: what the loader does with each registration of a
        plugin that loaded. The same object again is harmless; another one under a taken name is an error
        naming both sources, unless ``override``."""
        existing = self._entries.get(name)
        if existing is not None and existing.obj is obj:
            return existing
        if existing is not None and not override:
            hint = "pass override=True to replace it on purpose"
            raise DuplicateComponentError(self.kind, name, existing.origin, origin, hint)
        options, accepts_any = signature_options(obj, self.positional)
        entry = Entry(self.kind, name, obj, origin, distribution, options, accepts_any)
        self._entries[name] = entry
        return entry

    def clash(self, name: str, obj: Any) -> str | None:
        """The origin of a different component already registered as ``name``, if any."""
        existing = self._entries.get(name)
        return existing.origin if existing is not None and existing.obj is not obj else None

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)
        if self.loader is not None:
            self.loader.unmark(self, name)

    def snapshot(self) -> dict[str, Entry]:
        return dict(self._entries)

    def restore(self, snapshot: dict[str, Entry]) -> None:
        self._entries = dict(snapshot)

    # --- looking up ---------------------------------------------------------------------------------------
    def _loaded(self) -> dict[str, Entry]:
        if self.loader is not None:
            self.loader.ensure_loaded()
        return self._entries

    def entry(self, name: str, *, hint: bool = True) -> Entry:
        """The component called ``name``. An unknown name raises :class:`UnknownComponentError` listing the
        available ones and, with ``hint``, the closest matches (leave it out where a near name means nothing,
        e.g. for a plugin a model file needs)."""
        try:
            return self._loaded()[name]
        except KeyError:
            raise UnknownComponentError(self.unknown_message(name, hint=hint)) from None

    def get(self, name: str) -> Callable[..., Any]:
        return self.entry(name).obj

    def unknown_message(self, name: str, *, hint: bool = True) -> str:
        names = sorted(self._loaded())
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5) if hint else []
        did_you_mean = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        available = ", ".join(names) if names else "none"
        return f"unknown {self.kind} {name!r}.{did_you_mean} Available {self.kind}s: {available}.{self._broken_note()}"

    def _broken_note(self) -> str:
        """When a name is unknown, a plugin that failed to load is the likely reason: say so."""
        if self.loader is None or not self.loader.broken:
            return ""
        names = ", ".join(b.source for b in self.loader.broken)
        return f" (plugins that failed to load: {names}; see `vqkit plugins`)"

    def names(self) -> list[str]:
        return sorted(self._loaded())

    def entries(self) -> list[Entry]:
        entries = self._loaded()
        return [entries[n] for n in sorted(entries)]

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._loaded())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"


# vqkit's plugin loader and its registries. The loader holds all loading state (what was loaded, what was
# requested, what is broken); the registries hold the components.
loader = PluginLoader()
encoders = Registry("encoder", positional=("in_channels", "latent_dim"), loader=loader)
decoders = Registry("decoder", positional=("latent_dim", "out_channels"), loader=loader)
quantizers = Registry("quantizer", positional=("dim", "codebook_size"), loader=loader)
objectives = Registry("objective", loader=loader)  # losses; their constructors take keyword options only
exporters = Registry("exporter", loader=loader)

REGISTRIES: dict[str, Registry] = {
    "encoder": encoders,
    "quantizer": quantizers,
    "decoder": decoders,
    "objective": objectives,
    "exporter": exporters,
}


@dataclass(frozen=True)
class Registries:
    """What a callable entry point is handed: ``def register(r): r.quantizers.add("mine", Mine)``."""

    encoders: Registry = encoders
    quantizers: Registry = quantizers
    decoders: Registry = decoders
    objectives: Registry = objectives
    exporters: Registry = exporters


loader.handed = Registries()
