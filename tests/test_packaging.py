"""What the installed distribution promises: dependencies with lower bounds only, a typed package, a licence."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[Requirement]:
    return [Requirement(line) for line in importlib.metadata.requires("vqkit") or []]


def test_dependencies_have_lower_bounds_only() -> None:
    requirements = _requirements()
    assert {"torch", "torchvision", "pillow"} <= {r.name for r in requirements}
    for requirement in requirements:
        # an upper bound (<, <=, ==, ~=) would refuse the next release of torch before anyone tried it
        assert all(spec.operator == ">=" for spec in requirement.specifier), str(requirement)
    floors = {r.name: min(Version(s.version) for s in r.specifier) for r in requirements if r.marker is None}
    # the APIs vqkit calls: torch.compiler.is_exporting (2.7), ImageFont.load_default(size=) (Pillow 10.1)
    assert floors["torch"] >= Version("2.7") and floors["pillow"] >= Version("10.1")
    extras = importlib.metadata.metadata("vqkit").get_all("Provides-Extra") or []
    assert "tensorboard" in extras


def test_the_package_is_typed_and_says_its_licences() -> None:
    assert importlib.resources.files("vqkit").joinpath("py.typed").is_file()
    files = {str(f) for f in importlib.metadata.files("vqkit") or []}
    if "vqkit/__init__.py" in files:  # a regular install: py.typed must have come with it
        assert "vqkit/py.typed" in files
    else:  # an editable install: the build configuration must ship it
        tomllib = pytest.importorskip("tomllib")
        config = tomllib.loads((ROOT / "pyproject.toml").read_text())
        assert "py.typed" in config["tool"]["setuptools"]["package-data"]["vqkit"]
    metadata = importlib.metadata.metadata("vqkit")
    assert metadata["License-Expression"] == "MIT AND CC-BY-SA-3.0"  # code MIT, the bundled digits CC BY-SA
    assert "LICENSE" in (metadata.get_all("License-File") or [])
