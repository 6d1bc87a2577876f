from __future__ import annotations

import pytest
from torch import nn

import vqkit
from vqkit.errors import DuplicateComponentError, UnknownComponentError
from vqkit.registry import Registry, origin


def test_builtins_are_registered_with_their_origin() -> None:
    assert "conv3" in vqkit.encoders and "conv3" in vqkit.decoders and "vq" in vqkit.quantizers
    assert vqkit.quantizers.entry("vq").origin == "built-in"


def test_exporter_registry_is_not_shadowed_by_the_exporters_package() -> None:
    import vqkit.exporters

    import vqkit.registry

    vqkit.load_plugins()
    assert isinstance(vqkit.registry.exporters, Registry) and "onnx" in vqkit.registry.exporters
    # vqkit.exporters is the built-in exporters' package, as DESIGN.md lays out
    assert vqkit.exporters.__name__ == "vqkit.exporters"


def test_register_lookup_listing() -> None:
    reg = Registry("widget", positional=("dim",))

    @reg.register("alpha")
    class Alpha(nn.Module):
        """An alpha widget."""

        def __init__(self, dim: int, scale: float = 1.0, mode: str = "x") -> None:
            super().__init__()

    assert reg.get("alpha") is Alpha
    assert reg.names() == ["alpha"] and "alpha" in reg and len(reg) == 1
    entry = reg.entry("alpha")
    assert entry.summary == "An alpha widget."
    assert [(o.name, o.default) for o in entry.options] == [("scale", 1.0), ("mode", "x")]


def test_unknown_name_lists_closest_and_available() -> None:
    with pytest.raises(UnknownComponentError) as info:
        vqkit.quantizers.get("vqq")
    msg = str(info.value)
    assert "'vq'" in msg and "Did you mean" in msg and "Available quantizers" in msg


def test_duplicate_names_fail_unless_overriding() -> None:
    reg = Registry("widget")
    with origin("pkg-a 1.0"):
        reg.add("same", lambda: None)
    with pytest.raises(DuplicateComponentError, match="pkg-a 1.0.*pkg-b 2.0"), origin("pkg-b 2.0"):
        reg.add("same", lambda: None)
    replacement = lambda: 1  # noqa: E731
    reg.add("same", replacement, override=True)
    assert reg.get("same") is replacement


def test_registering_the_same_object_twice_is_harmless() -> None:
    reg = Registry("widget")

    def f() -> None: ...

    reg.add("f", f)
    reg.add("f", f)
    assert reg.names() == ["f"]
