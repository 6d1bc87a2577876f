"""Plugin discovery: entry points of (fake) installed distributions, VQKIT_PLUGINS, --plugin FILE/MODULE,
broken plugins and name clashes. Every test runs inside ``preserved_state`` so nothing it registers leaks."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import run

import vqkit
from vqkit import discovery
from vqkit.discovery import PluginWarning
from vqkit.errors import ModelFileError, UnknownComponentError, VQKitError

# A quantizer as a third party would write it: a subclass of the built-in vq with its own name.
QUANTIZER_SOURCE = '''
from vqkit.plugins.quantizers.vq import VQ
from vqkit.registry import quantizers


@quantizers.register("{name}")
class FakeQuantizer(VQ):
    """A fake quantizer for tests."""
'''


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(discovery.ENV_VAR, raising=False)
    modules = set(sys.modules)
    with discovery.preserved_state():
        yield
    for name in set(sys.modules) - modules:
        if name.startswith("fake_"):
            del sys.modules[name]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def fake_distribution(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    dist: str,
    entry_points: dict[str, str],
    modules: dict[str, str],
) -> None:
    """An installed distribution as importlib.metadata sees it: a .dist-info folder and its modules on
    sys.path (what pip leaves behind, minus the files we do not need)."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[vqkit.plugins]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(root))


def test_entry_point_module_registers_with_its_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod, name = unique("fake_mod"), unique("fake-q")
    fake_distribution(
        tmp_path, monkeypatch, "fake-vq-plugin", {"fake": mod}, {mod: QUANTIZER_SOURCE.format(name=name)}
    )
    vqkit.load_plugins()
    entry = vqkit.quantizers.entry(name)
    assert entry.origin == "fake-vq-plugin 1.0" and entry.distribution == "fake-vq-plugin==1.0"
    assert entry.summary == "A fake quantizer for tests."
    # The plugin imported the built-in vq to subclass it: vq is still built-in.
    assert vqkit.quantizers.entry("vq").origin == "built-in"


def test_model_file_names_the_package_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod, name = unique("fake_mod"), unique("fake-q")
    fake_distribution(
        tmp_path / "site",
        monkeypatch,
        "fake-vq-plugin",
        {"fake": mod},
        {mod: QUANTIZER_SOURCE.format(name=name)},
    )
    vqkit.load_plugins()
    model = vqkit.build_model("conv3", name, channels=1, latent_dim=8, codebook_size=16, seed=0)
    assert model.spec.origins == {"encoder": None, "quantizer": "fake-vq-plugin==1.0", "decoder": None}
    path = vqkit.save(model, tmp_path / "m.safetensors")
    assert vqkit.read_spec(path)[0].origins["quantizer"] == "fake-vq-plugin==1.0"
    vqkit.quantizers.remove(name)  # as if the plugin were uninstalled
    with pytest.raises(ModelFileError, match=rf"unknown quantizer '{name}'.*pip install fake-vq-plugin==1.0"):
        vqkit.load(path)


def test_importing_a_plugin_early_keeps_its_origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod, name = unique("fake_mod"), unique("fake-q")
    fake_distribution(
        tmp_path, monkeypatch, "fake-early", {"fake": mod}, {mod: QUANTIZER_SOURCE.format(name=name)}
    )
    __import__(mod)  # a user's script imports the plugin before vqkit looks for plugins
    # Its registration waits for the loader, which finds the entry point that owns the module: the very
    # first lookup already names the package.
    assert vqkit.quantizers.entry(name).origin == "fake-early 1.0"
    vqkit.load_plugins()
    assert vqkit.quantizers.entry(name).distribution == "fake-early==1.0"


def test_a_registration_outside_any_plugin_names_its_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod, name = unique("fake_mod"), unique("fake-q")
    (tmp_path / f"{mod}.py").write_text(QUANTIZER_SOURCE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__(mod)  # a module no entry point names: a user's own script or package
    assert vqkit.quantizers.entry(name).origin == f"module {mod}"
    assert vqkit.quantizers.entry(name).distribution is None


def test_entry_point_callable_is_handed_the_registries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod, name = unique("fake_mod"), unique("fake-enc")
    source = f'''
        from vqkit.plugins.encoders.conv3 import Conv3Encoder

        def register(r):
            r.encoders.add("{name}", Conv3Encoder)
    '''
    fake_distribution(tmp_path, monkeypatch, "fake-callable", {"fake": f"{mod}:register"}, {mod: source})
    vqkit.load_plugins()
    assert vqkit.encoders.entry(name).origin == "fake-callable 1.0"
    assert vqkit.encoders.entry("conv3").origin == "built-in"


def test_a_broken_plugin_warns_once_and_the_rest_keep_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad = unique("fake_good"), unique("fake_bad")
    good_name, half_name = unique("good-q"), unique("half-q")
    broken_source = QUANTIZER_SOURCE.format(name=half_name) + "\nraise RuntimeError('plugin exploded')\n"
    fake_distribution(
        tmp_path,
        monkeypatch,
        "fake-mixed",
        {"good": good, "bad": bad},
        {good: QUANTIZER_SOURCE.format(name=good_name), bad: broken_source},
    )
    with pytest.warns(
        PluginWarning, match=rf"vqkit plugin bad \({bad}, from fake-mixed 1.0\).*plugin exploded"
    ):
        vqkit.load_plugins()
    assert good_name in vqkit.quantizers and "vq" in vqkit.quantizers
    # What the broken plugin registered before failing is taken back: it contributes nothing.
    assert half_name not in vqkit.quantizers
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        vqkit.load_plugins()  # once: loading again does not warn again
    assert not [w for w in record if issubclass(w.category, PluginWarning)]
    with pytest.raises(UnknownComponentError, match=r"plugins that failed to load: bad"):
        vqkit.build_model("conv3", half_name)

    code, text = run("plugins")
    assert code == 0 and good_name in text and "built-in" in text
    assert "broken plugins (skipped):" in text and "RuntimeError: plugin exploded" in text
    data = json.loads(run("plugins", "--json")[1])
    assert any(b["error"] == "RuntimeError: plugin exploded" for b in data["broken"])
    assert any(c["name"] == good_name and c["distribution"] == "fake-mixed==1.0" for c in data["components"])


def test_a_name_clash_between_two_plugins_names_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, name = unique("fake_a"), unique("fake_b"), unique("same-q")
    fake_distribution(
        tmp_path / "a", monkeypatch, "fake-a", {"a": a}, {a: QUANTIZER_SOURCE.format(name=name)}
    )
    fake_distribution(
        tmp_path / "b", monkeypatch, "fake-b", {"b": b}, {b: QUANTIZER_SOURCE.format(name=name)}
    )
    with pytest.warns(
        PluginWarning, match=rf"quantizer '{name}' is registered twice: by fake-a 1.0 and by fake-b 1.0"
    ):
        vqkit.load_plugins()
    assert vqkit.quantizers.entry(name).origin == "fake-a 1.0"  # sorted by distribution: a fixed winner


def test_a_plugin_file_that_clashes_with_a_builtin_is_an_error(tmp_path: Path) -> None:
    plugin = tmp_path / "clash.py"
    plugin.write_text(QUANTIZER_SOURCE.format(name="vq"))
    code, text = run("--plugin", str(plugin), "build", "--quantizer", "vq")
    assert code == 1
    assert f"quantizer 'vq' is registered twice: by built-in and by file {plugin}" in text
    assert text.count("\n") == 1


def test_plugin_file_and_module_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file_name, mod, mod_name = unique("file-q"), unique("fake_cli"), unique("mod-q")
    plugin = tmp_path / "my_quantizer.py"
    plugin.write_text(QUANTIZER_SOURCE.format(name=file_name))
    (tmp_path / f"{mod}.py").write_text(QUANTIZER_SOURCE.format(name=mod_name))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "m.safetensors"
    code, text = run(
        "--plugin", str(plugin), "--plugin", mod, "build", "--quantizer", file_name,
        "--latent-dim", "8", "--codebook-size", "16", "-o", str(out),
    )  # fmt: skip
    assert code == 0, text
    assert f"quantizer  {file_name}" in text and "16 codes" in text
    assert vqkit.quantizers.entry(file_name).origin == f"file {plugin}"
    assert vqkit.quantizers.entry(mod_name).origin == f"module {mod}"
    assert vqkit.load(out).spec.quantizer == file_name
    code, text = run("plugins", "--json")
    origins = {c["name"]: c["origin"] for c in json.loads(text)["components"]}
    assert origins[file_name] == f"file {plugin}" and origins[mod_name] == f"module {mod}"


def test_a_plugin_module_may_define_register_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod, name = unique("fake_hook"), unique("hook-enc")
    (tmp_path / f"{mod}.py").write_text(
        "from vqkit.plugins.encoders.conv3 import Conv3Encoder\n\n"
        f"def register_plugins(r):\n    r.encoders.add({name!r}, Conv3Encoder)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    vqkit.load_plugins([mod])
    assert vqkit.encoders.entry(name).origin == f"module {mod}"


def test_a_broken_plugin_file_fails_commands_but_not_the_listing(tmp_path: Path) -> None:
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("from vqkit.registry import quantizers\n\nundefined_name + 1\n")
    code, text = run("--plugin", str(bad), "build")
    assert code == 1 and text.count("\n") == 1
    assert f"Error: plugin {bad} failed to load: NameError: name 'undefined_name' is not defined" in text
    code, text = run("--plugin", str(bad), "plugins")
    assert code == 0 and "vq" in text and "conv3" in text
    assert "broken plugins (skipped):" in text and "NameError" in text
    code, text = run("build", "--latent-dim", "8")  # the failed request is not retried by later commands
    assert code == 0, text


def test_missing_plugin_file_or_module(tmp_path: Path) -> None:
    code, text = run("--plugin", str(tmp_path / "nope.py"), "build")
    assert code == 1 and "no such plugin file" in text
    code, text = run("--plugin", "no_such_module_xyz", "build")
    assert code == 1 and "plugin no_such_module_xyz failed to load: ModuleNotFoundError" in text


def test_vqkit_plugins_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod, bad, name = unique("fake_env"), unique("fake_env_bad"), unique("env-q")
    (tmp_path / f"{mod}.py").write_text(QUANTIZER_SOURCE.format(name=name))
    (tmp_path / f"{bad}.py").write_text("raise ImportError('missing dependency foo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(discovery.ENV_VAR, f"{mod}, {bad}")
    code, text = run("plugins")
    assert code == 0 and name in text and f"module {mod}" in text
    # The CLI shows the warning as one line (on stderr), and lists the plugin as broken.
    assert (
        f"Warning: vqkit plugin {bad} failed to load and is skipped: ImportError: missing dependency foo"
        in text
    )
    assert f"  {bad}: ImportError: missing dependency foo" in text
    assert vqkit.quantizers.entry(name).origin == f"module {mod}"


def test_strict_extra_plugins_raise_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("1 / 0\n")
    with pytest.raises(VQKitError, match="plugin .*bad.py failed to load: ZeroDivisionError"):
        vqkit.load_plugins([str(bad)])


def test_a_model_built_with_a_plugin_file_says_to_load_it(tmp_path: Path) -> None:
    name = unique("file-q")
    plugin = tmp_path / "my_quantizer.py"
    plugin.write_text(QUANTIZER_SOURCE.format(name=name))
    with discovery.preserved_state():
        vqkit.load_plugins([str(plugin)])
        model = vqkit.build_model("conv3", name, channels=1, latent_dim=8, codebook_size=16, seed=0)
        path = vqkit.save(model, tmp_path / "m.safetensors")
    assert model.spec.origins["quantizer"] is None  # no package to name
    with pytest.raises(
        ModelFileError, match=rf"unknown quantizer '{name}'.*load that plugin \(vqkit --plugin"
    ):
        vqkit.load(path)
    vqkit.load_plugins([str(plugin)])  # loaded again, the model loads
    assert vqkit.load(path).spec.quantizer == name


# --- a plugin must not end the program --------------------------------------------------------------------
EXITS = {
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "raise SystemExit": "raise SystemExit('bye')\n",
    "BaseException": "class Stop(BaseException):\n    pass\n\nraise Stop('stop')\n",
}


@pytest.mark.parametrize("how", list(EXITS))
def test_a_plugin_that_exits_while_loading_is_broken_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    mod, name = unique("fake_exit"), unique("exit-q")
    source = QUANTIZER_SOURCE.format(name=name) + EXITS[how]  # registers, then ends the program
    fake_distribution(tmp_path, monkeypatch, "fake-exit", {"exit": mod}, {mod: source})
    with pytest.warns(PluginWarning, match=rf"vqkit plugin exit \({mod}, from fake-exit 1.0\)"):
        vqkit.load_plugins()
    assert any(b.source.startswith("exit (") for b in discovery.broken)
    assert name not in vqkit.quantizers and "vq" in vqkit.quantizers  # it contributes nothing


def test_a_plugin_that_exits_through_the_variable_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = unique("fake_exit_env")
    (tmp_path / f"{mod}.py").write_text(EXITS["sys.exit(0)"])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(discovery.ENV_VAR, mod)
    out = tmp_path / "m.safetensors"
    code, text = run("build", "--latent-dim", "8", "-o", str(out))
    assert code == 0 and out.exists()  # the command did its work
    assert (
        f"Warning: vqkit plugin {mod} failed to load and is skipped: SystemExit: it called sys.exit(0)"
        in text
    )


def test_a_plugin_file_that_exits_is_an_error(tmp_path: Path) -> None:
    plugin = tmp_path / "exits.py"
    plugin.write_text(EXITS["sys.exit(0)"])
    out = tmp_path / "m.safetensors"
    code, text = run("--plugin", str(plugin), "build", "-o", str(out))
    assert code == 1 and text.count("\n") == 1 and not out.exists()
    assert f"Error: plugin {plugin} failed to load: SystemExit: it called sys.exit(0) while loading" in text
    code, text = run("--plugin", str(plugin), "plugins")
    assert code == 0 and "broken plugins (skipped):" in text and "SystemExit" in text


# --- all or nothing -------------------------------------------------------------------------------------
def test_a_callable_plugin_that_fails_takes_back_what_it_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod, name = unique("fake_half"), unique("half-enc")
    source = f"""
        from vqkit.plugins.encoders.conv3 import Conv3Encoder

        def register(r):
            r.encoders.add("{name}", Conv3Encoder)
            raise RuntimeError("half way")
    """
    fake_distribution(tmp_path, monkeypatch, "fake-half", {"half": f"{mod}:register"}, {mod: source})
    with pytest.warns(PluginWarning, match="RuntimeError: half way"):
        vqkit.load_plugins()
    assert name not in vqkit.encoders


def test_a_plugin_that_uses_one_name_twice_is_broken(tmp_path: Path) -> None:
    name = unique("twice-q")
    plugin = tmp_path / "twice.py"
    plugin.write_text(QUANTIZER_SOURCE.format(name=name) + QUANTIZER_SOURCE.format(name=name))
    with pytest.raises(VQKitError, match=rf"quantizer '{name}' is registered twice: by file .* and by file"):
        vqkit.load_plugins([str(plugin)])
    assert name not in vqkit.quantizers
    code, text = run("--plugin", str(plugin), "build")
    assert code == 1 and "two of its components share the name" in text


# --- names already taken ----------------------------------------------------------------------------------
def test_a_clash_on_the_command_line_says_which_flag_replaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = tmp_path / "clash.py"
    plugin.write_text(QUANTIZER_SOURCE.format(name="vq"))
    code, text = run("--plugin", str(plugin), "build", "--quantizer", "vq")
    assert code == 1 and text.count("\n") == 1
    assert text.count("registered twice") == 1 and "override=True" not in text
    assert f"load it with --plugin-override {plugin}" in text
    monkeypatch.setenv("COLUMNS", "300")  # the temporary folder's path is long: keep lines whole
    code, text = run("--plugin", str(plugin), "plugins")  # listed as broken, once, with the same way out
    assert code == 0 and text.count("registered twice") == 1 and "Warning" not in text
    assert f"to use it instead, load it with --plugin-override {plugin}" in text
    out = tmp_path / "m.safetensors"
    code, text = run("--plugin-override", str(plugin), "build", "--quantizer", "vq", "-o", str(out))
    assert code == 0, text
    assert vqkit.quantizers.entry("vq").origin == f"file {plugin}"
    assert vqkit.quantizers.get("vq").__doc__ == "A fake quantizer for tests."


def test_load_plugins_override_replaces_a_registered_name(tmp_path: Path) -> None:
    plugin = tmp_path / "clash.py"
    plugin.write_text(QUANTIZER_SOURCE.format(name="vq"))
    with pytest.raises(VQKitError, match=r"by built-in and by file .*pass override=True"):
        vqkit.load_plugins([str(plugin)])
    assert vqkit.quantizers.entry("vq").origin == "built-in"
    vqkit.load_plugins([str(plugin)], override=True)
    assert vqkit.quantizers.entry("vq").origin == f"file {plugin}"


# --- package folders -----------------------------------------------------------------------------------------
def test_a_package_folder_loads_as_one_plugin(tmp_path: Path) -> None:
    name, enc = unique("pkg-q"), unique("pkg-enc")
    folder = tmp_path / "my_plugin"
    folder.mkdir()
    (folder / "__init__.py").write_text("from . import encoder, quantizer  # noqa: F401\n")
    (folder / "quantizer.py").write_text(QUANTIZER_SOURCE.format(name=name))
    (folder / "encoder.py").write_text(
        "from vqkit.plugins.encoders.conv3 import Conv3Encoder\nfrom vqkit.registry import encoders\n\n"
        f"encoders.register({enc!r})(type('PkgEncoder', (Conv3Encoder,), {{}}))\n"
    )
    out = tmp_path / "m.safetensors"
    code, text = run(
        "--plugin", f"{folder}/", "build", "--encoder", enc, "--decoder", "conv3", "--quantizer", name,
        "--latent-dim", "8", "-o", str(out),
    )  # fmt: skip
    assert code == 0, text
    assert vqkit.quantizers.entry(name).origin == f"folder {folder}/"
    assert vqkit.encoders.entry(enc).origin == f"folder {folder}/"


def test_a_folder_that_is_not_a_package_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "loose"
    folder.mkdir()
    (folder / "q.py").write_text(QUANTIZER_SOURCE.format(name=unique("loose-q")))
    code, text = run("--plugin", str(folder), "build")
    assert code == 1 and text.count("\n") == 1
    assert "a folder without __init__.py; a plugin folder must be a package" in text
    monkeypatch.chdir(tmp_path)  # a folder named like a module: say how to name it as a path
    code, text = run("--plugin", "loose", "build")
    assert code == 1 and "give it as a path: ./loose" in text


# --- the listing ------------------------------------------------------------------------------------------
def test_plugins_name_says_a_named_plugin_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # the temporary folder's path is long: keep its line whole
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("raise ImportError('needs a package that is not installed')\n")
    code, text = run("--plugin", str(bad), "plugins", "vq")
    assert code == 0 and "beta=0.25" in text
    assert "plugins that failed to load:" in text and f"{bad}: ImportError: needs a package" in text


def test_plugins_lines_fit_the_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = tmp_path / "a_rather_long_plugin_file_name_to_show_in_the_origin_column.py"
    objective = unique("wordy-objective")
    plugin.write_text(
        "from vqkit.registry import objectives\n\n\n"
        f"@objectives.register({objective!r})\n"
        "class Wordy:\n"
        '    """A loss whose summary goes on and on, far past any terminal, so that the listing has to '
        'wrap it onto several lines to keep each of them within the width the terminal offers."""\n\n'
        "    def __init__(self, weight: float = 1.0, "
        + ", ".join(f"w{i}: int = {i}" for i in range(20))
        + "):\n"
        "        pass\n"
    )
    for columns in (80, 50):
        monkeypatch.setenv("COLUMNS", str(columns))
        for args in (("plugins",), ("plugins", "--verbose"), ("plugins", objective)):
            code, text = run("--plugin", str(plugin), *args)
            assert code == 0, text
            assert "objectives:" in text and objective in text
            assert max(len(line) for line in text.splitlines()) <= columns, text


def test_safe_distribution_name() -> None:
    for good in ("vqkit-plugin-example", "vqkit-plugin-example==0.1.0", "a", "Pkg_1.x==2.0rc1+local.3"):
        assert discovery.safe_distribution_name(good) == good
    for bad in ("evilpkg; touch PWNED", "pkg==1.0; rm -rf ~", "-pkg", "pkg-", "pkg==", "p k g", "pkg==1!2",
                "$(reboot)", "pkg==`x`", "", None, 3, "a" * 300):  # fmt: skip
        assert discovery.safe_distribution_name(bad) is None
