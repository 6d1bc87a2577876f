"""One small registry per kind of component: a decorator to register, a lookup that names the closest
matches, and a listing. Built-ins and third-party plugins go through exactly the same path."""

from __future__ import annotations

import contextlib
import difflib
import inspect
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from vqkit.errors import DuplicateComponentError, UnknownComponentError

# Where the code being imported right now comes from ("built-in", "vqkit-plugin-example 0.1.0", "file ...").
# Discovery sets it around each plugin import; registration outside discovery records the module name.
_current_origin: ContextVar[tuple[str, str | None] | None] = ContextVar("vqkit_origin", default=None)


@contextlib.contextmanager
def origin(label: str, distribution: str | None = None) -> Iterator[None]:
    """Attribute every registration made inside the block to ``label`` (and its distribution, if any)."""
    token = _current_origin.set((label, distribution))
    try:
        yield
    finally:
        _current_origin.reset(token)


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
    # True when registered outside discovery (a plain import): discovery may still attribute it to the
    # plugin whose entry point owns its module, so importing a plugin early does not lose its origin.
    inferred: bool = False

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
    """Components of one kind (``encoder``, ``quantizer``, ``decoder``, ``exporter``) by name.

    ``positional`` names the constructor arguments the builder supplies; everything else in the
    constructor's signature is an option a user may set.
    """

    def __init__(self, kind: str, positional: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.positional = positional
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str | None = None, *, override: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@quantizers.register("vq")``."""

        def decorate(obj: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name or obj.__name__.lower(), obj, override=override)
            return obj

        return decorate

    def add(self, name: str, obj: Callable[..., Any], *, override: bool = False) -> Entry:
        current = _current_origin.get()
        label, dist = current if current else (f"module {getattr(obj, '__module__', '?')}", None)
        existing = self._entries.get(name)
        if existing is not None and not override:
            if existing.obj is obj:
                return existing
            raise DuplicateComponentError(
                f"{self.kind} {name!r} is registered twice: by {existing.origin} and by {label} "
                f"(pass override=True to replace it on purpose)"
            )
        options, accepts_any = signature_options(obj, self.positional)
        entry = Entry(self.kind, name, obj, label, dist, options, accepts_any, inferred=current is None)
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(self.unknown_message(name)) from None

    def get(self, name: str) -> Callable[..., Any]:
        return self.entry(name).obj

    def unknown_message(self, name: str) -> str:
        names = sorted(self._entries)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        available = ", ".join(names) if names else "none"
        return f"unknown {self.kind} {name!r}.{hint} Available {self.kind}s: {available}.{_broken_note()}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _broken_note() -> str:
    """When a name is unknown, a plugin that failed to load is the likely reason: say so."""
    from vqkit.discovery import broken  # discovery imports this module; import it only when needed

    if not broken:
        return ""
    names = ", ".join(b.source for b in broken)
    return f" (plugins that failed to load: {names}; see `vqkit plugins`)"


encoders = Registry("encoder", positional=("in_channels", "latent_dim"))
decoders = Registry("decoder", positional=("latent_dim", "out_channels"))
quantizers = Registry("quantizer", positional=("dim", "codebook_size"))
exporters = Registry("exporter")
objectives = Registry("objective")  # training losses, built as cls(**options)

REGISTRIES: dict[str, Registry] = {
    "encoder": encoders,
    "quantizer": quantizers,
    "decoder": decoders,
    "exporter": exporters,
    "objective": objectives,
}


@dataclass(frozen=True)
class Registries:
    """What a callable entry point is handed: ``def register(r): r.quantizers.add("mine", Mine)``."""

    encoders: Registry = encoders
    quantizers: Registry = quantizers
    decoders: Registry = decoders
    exporters: Registry = exporters
    objectives: Registry = objectives
