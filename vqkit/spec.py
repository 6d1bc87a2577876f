"""The model spec: everything needed to rebuild a model, stored as JSON beside its weights, and the checks a
spec read from someone else's file must pass before anything is built from it."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from vqkit._version import __version__

# 1: options as the user set them. 2: adds every resolved option of each component and its version.
SPEC_FORMAT = 2
PARTS = ("encoder", "quantizer", "decoder")

# What a spec may ask for. A model file is untrusted input: these bound what building it may allocate before
# its stored tensors are compared with the model the spec describes.
MAX_CHANNELS = 1024
MAX_IMAGE_SIZE = 16384
MAX_LATENT_DIM = 65536
MAX_CODEBOOK_SIZE = 2**62  # codes are int64
MAX_NAME_LENGTH = 200


# The model built when nothing is named, in one place: build_model, the model spec and the CLI's help use these.
DEFAULT_ENCODER = "conv3"
DEFAULT_QUANTIZER = "vq"
DEFAULT_CHANNELS = 3
DEFAULT_IMAGE_SIZE = 32


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model: stored as JSON in the model file's metadata.

    ``encoder_options`` etc. are the options the user set; ``resolved_options`` holds, per part, every option
    the component was built with (its defaults merged in), so that rebuilding never depends on the defaults
    of a later version; ``versions`` the version of the code that provided each part (vqkit's for built-ins,
    the plugin distribution's for third-party components, None when unknown).
    """

    encoder: str = DEFAULT_ENCODER
    quantizer: str = DEFAULT_QUANTIZER
    decoder: str = DEFAULT_ENCODER  # the encoder's mirror
    encoder_options: dict[str, Any] = field(default_factory=dict)
    quantizer_options: dict[str, Any] = field(default_factory=dict)
    decoder_options: dict[str, Any] = field(default_factory=dict)
    channels: int = DEFAULT_CHANNELS
    image_size: int = DEFAULT_IMAGE_SIZE
    latent_dim: int = 64
    codebook_size: int = 512
    value_range: tuple[float, float] = (-1.0, 1.0)
    # Which distribution each component came from ("vqkit-plugin-example==0.1.0"); None for built-ins.
    origins: dict[str, str | None] = field(default_factory=dict)
    resolved_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    vqkit_version: str = __version__
    format: int = SPEC_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        """A spec from parsed JSON; every field is checked first (:class:`ValueError` naming the field)."""
        if not isinstance(data, dict):
            raise ValueError("the spec is not a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        fields = {k: v for k, v in data.items() if k in known}
        problem = spec_problem(fields)
        if problem:
            raise ValueError(problem)
        spec = cls(**fields)
        spec.value_range = tuple(spec.value_range)  # type: ignore[assignment]
        return spec

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        from vqkit.textformats import load_json

        return cls.from_dict(load_json(text, "the spec"))

    def options(self, part: str) -> dict[str, Any]:
        """The options ``part`` is built with: the resolved ones, with the user-set ones on top."""
        return {**self.resolved_options.get(part, {}), **getattr(self, f"{part}_options")}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_problem(name: str, value: Any, low: int, high: int) -> str | None:
    if not _is_int(value):
        return f"{name} must be an integer, got {value!r:.60}"
    if not low <= value <= high:
        return f"{name} must lie in [{low}, {high}], got {value}"
    return None


def _names_problem(data: dict[str, Any]) -> str | None:
    for part in PARTS:
        name = data.get(part)
        if part in data and (not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH):
            return f"{part} must be a component name (text), got {name!r:.60}"
        options = data.get(f"{part}_options", {})
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            return f"{part}_options must be a JSON object of option names to values, got {options!r:.60}"
    for key, inner in (("resolved_options", dict), ("versions", str), ("origins", str)):
        value = data.get(key, {})
        ok = isinstance(value, dict) and all(
            k in PARTS and (v is None or isinstance(v, inner)) for k, v in value.items()
        )
        if not ok:
            return f"{key} must map encoder/quantizer/decoder to {inner.__name__} or null, got {value!r:.60}"
    return None


def spec_problem(data: dict[str, Any]) -> str | None:
    """The first thing wrong with a spec's fields (a message naming the field), or None."""
    version = data.get("format", SPEC_FORMAT)
    if not _is_int(version) or version < 1:
        return f"format must be a positive integer, got {version!r:.60}"
    if version > SPEC_FORMAT:
        return f"format {version} was written by a newer vqkit (this one reads up to {SPEC_FORMAT}); upgrade vqkit"
    problem = _names_problem(data)
    limits = {
        "channels": (1, MAX_CHANNELS),
        "image_size": (1, MAX_IMAGE_SIZE),
        "latent_dim": (1, MAX_LATENT_DIM),
        "codebook_size": (2, MAX_CODEBOOK_SIZE),
    }
    for name, (low, high) in limits.items():
        if problem is None and name in data:
            problem = _int_problem(name, data[name], low, high)
    if problem:
        return problem
    value_range = data.get("value_range", (-1.0, 1.0))
    if not (
        isinstance(value_range, (list, tuple))
        and len(value_range) == 2
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value_range
        )
        and value_range[0] < value_range[1]
    ):
        return f"value_range must be two finite numbers [low, high] with low < high, got {value_range!r:.60}"
    if not isinstance(data.get("vqkit_version", ""), str):
        return f"vqkit_version must be text, got {data['vqkit_version']!r:.60}"
    return None
