from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

import vqkit
from vqkit.errors import DuplicateComponentError, UnknownComponentError
from vqkit.registry import REGISTRIES, Registries, Registry, objectives

VQKIT = Path(vqkit.__file__).parent


def test_builtins_are_registered_with_their_origin() -> None:
    assert "conv3" in vqkit.encoders and "conv3" in vqkit.decoders and "vq" in vqkit.quantizers
    assert vqkit.quantizers.entry("vq").origin == "built-in"


def test_a_fresh_interpreter_finds_the_builtins_without_loading_plugins_first() -> None:
    code = (
        "from vqkit.registry import quantizers, exporters\n"
        "print(quantizers.get('vq').__name__, quantizers.entry('vq').origin, 'onnx' in exporters)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["VQ", "built-in", "True"]


def test_importing_a_builtin_module_first_keeps_it_built_in() -> None:
    # A script that imports a built-in class (to subclass it) before any lookup: its registration waits for
    # the loader, which attributes it to the entry point that owns the module.
    code = (
        "from vqkit.plugins.quantizers.vq import VQ\n"
        "from vqkit.registry import quantizers\n"
        "print(quantizers.entry('vq').origin, quantizers.get('vq') is VQ)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["built-in", "True"]


def test_first_lookups_from_many_threads_all_find_the_builtins() -> None:
    # Eight threads look up at once in a fresh interpreter while another imports a built-in module itself:
    # none may see a half-loaded registry, and none may wait on the other forever.
    code = (
        "import threading\n"
        "from vqkit.registry import encoders, quantizers\n"
        "found, barrier = [], threading.Barrier(9)\n"
        "def look():\n"
        "    barrier.wait()\n"
        "    found.append((quantizers.entry('ema').origin, encoders.entry('conv3').origin))\n"
        "def load_directly():\n"
        "    barrier.wait()\n"
        "    import vqkit.plugins.quantizers.fsq\n"
        "threads = [threading.Thread(target=look) for _ in range(8)]\n"
        "threads.append(threading.Thread(target=load_directly))\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "print(len(found), set(found), quantizers.entry('fsq').origin)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "8 {('built-in', 'built-in')} built-in"


def test_registry_and_loader_do_not_import_each_other() -> None:
    def imports(module: str) -> set[str]:
        tree = ast.parse((VQKIT / f"{module}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        return found

    assert not {"vqkit.discovery", "vqkit.registry"} & imports("plugin_loader")
    assert "vqkit.discovery" not in imports("registry")


def test_exporter_registry_is_not_shadowed_by_the_exporters_package() -> None:
    import vqkit.exporters
    import vqkit.registry

    vqkit.load_plugins()
    assert isinstance(vqkit.registry.exporters, Registry) and "onnx" in vqkit.registry.exporters
    # vqkit.exporters is the package of the built-in exporters, not the registry
    assert vqkit.exporters.__name__ == "vqkit.exporters"


def test_objectives_are_a_fifth_kind_like_the_others() -> None:
    assert REGISTRIES["objective"] is objectives and Registries().objectives is objectives
    # vqkit.objectives is the module of the objective contract (Objective, Loss); the registry lives beside the
    # other kinds, as vqkit.exporters is the package of built-in exporters and the registry vqkit.registry.exporters
    import vqkit.objectives as module

    assert module.Objective and module.build_loss and vqkit.registry.objectives is objectives
    assert objectives.kind == "objective" and objectives.positional == ()


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


def test_unknown_name_without_hint_suggests_nothing() -> None:
    # For a name a model file asks for, a near built-in name is no help.
    with pytest.raises(UnknownComponentError) as info:
        vqkit.quantizers.entry("vqq", hint=False)
    msg = str(info.value)
    assert "Did you mean" not in msg and "Available quantizers" in msg
    assert "Did you mean" not in vqkit.quantizers.unknown_message("vqq", hint=False)


def test_duplicate_names_fail_unless_overriding() -> None:
    reg = Registry("widget")
    reg.commit("same", lambda: None, origin="pkg-a 1.0")
    with pytest.raises(DuplicateComponentError, match="pkg-a 1.0.*pkg-b 2.0"):
        reg.commit("same", lambda: None, origin="pkg-b 2.0")
    replacement = lambda: 1  # noqa: E731
    reg.add("same", replacement, override=True)
    assert reg.get("same") is replacement


def test_registering_the_same_object_twice_is_harmless() -> None:
    reg = Registry("widget")

    def f() -> None: ...

    reg.add("f", f)
    reg.add("f", f)
    assert reg.names() == ["f"]


@pytest.mark.usefixtures("preserved_plugins")
def test_a_script_registers_into_the_global_registries() -> None:
    @objectives.register("test-l2")
    class L2:
        """Mean squared error."""

        def __init__(self, weight: float = 1.0) -> None:
            self.weight = weight

    entry = objectives.entry("test-l2")  # the lookup commits it
    assert entry.obj is L2 and entry.origin == f"module {__name__}" and entry.distribution is None
    assert [(o.name, o.default) for o in entry.options] == [("weight", 1.0)]
    vqkit.quantizers.add("vq", L2)  # a name a built-in holds: the next lookup says so, naming both
    with pytest.raises(
        DuplicateComponentError, match=rf"by built-in and by module {__name__}.*override=True"
    ):
        vqkit.quantizers.get("vq")
    assert vqkit.quantizers.entry("vq").origin == "built-in"
    vqkit.quantizers.add("vq", L2, override=True)
    assert vqkit.quantizers.get("vq") is L2


def test_the_replaced_builtin_is_back_after_the_isolated_test() -> None:
    assert vqkit.quantizers.entry("vq").origin == "built-in" and "test-l2" not in objectives
