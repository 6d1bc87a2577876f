"""Hostile and careless input, surface by surface: every training setting given a wrong type, NaN, an infinity,
a huge or a negative value, from Python, a TOML file and a YAML file; files built to exhaust a parser; names
that are not UTF-8; and the public functions' arguments. Each must end in one VQKitError naming the parameter
(and the file), never a traceback or a silently wrong run; what vqkit writes it must read back."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml  # the test extra installs it: YAML configs are one of the surfaces under test
from click.testing import CliRunner

import vqkit
from vqkit.cli.main import cli
from vqkit.data import load_images
from vqkit.data.pack import pack_folder
from vqkit.errors import ModelFileError, OptionError, VQKitError
from vqkit.evaluate import evaluate, reconstruct
from vqkit.export import export
from vqkit.generation import (
    CodePrior,
    PriorSpec,
    PriorTrainConfig,
    interpolate,
    sample_codes,
    sample_images,
    train_prior,
    uniform_codes,
)
from vqkit.images import write_image
from vqkit.training import TrainConfig
from vqkit.training.configfile import load_config, write_config_toml

pytestmark = pytest.mark.usefixtures("one_thread")

NAN, INF = float("nan"), float("inf")
POSIX_BYTES = sys.platform != "win32" and sys.platform != "darwin"  # names need not be UTF-8 here

# Wrong values for each kind of setting. A kind is how TrainConfig declares the field; the table is
# written out rather than derived from the code under test, so a loosened check fails here.
NOT_INTEGER = ["x", 1.5, True, [1], {"a": 1}, NAN, INF, -1, 2**63, 10**30]
NOT_NUMBER = ["x", True, [1.0], {"a": 1}, NAN, INF, -INF, -1, 10**400]
NOT_BOOL = ["no", "yes", "true", 1, 0, [True]]
NOT_PATH = [5, 1.5, True, [1, 2], {"a": 1}, ""]
NOT_CHOICE = [5, "nope", "", ["cosine"]]
HOSTILE: dict[str, list[Any]] = {
    "model": [
        "conv3",
        [1, 2],
        5,
        {"foo": 1},
        {"encoder": 5},
        {"latent_dim": "x"},
        {"codebook_size": NAN},
        {"encoder_options": [1]},
        {"quantizer_options": "beta=1"},
    ],
    "loss_options": ["x", [1], 5, {"lpips": 5}, {"lpips": [1]}],
    "betas": ["x", [0.9], [0.9, NAN], [1, 1], [-0.1, 0.9], [0.9, 0.99, 0.5], [True, 0.9]],
    "device": [7, "nope", "cuda:x", "", ["cpu"], "tpu"],
    "loss": [5, "", [1], {"mse": 1}],
    "data_memory_gb": [*NOT_NUMBER, 1e308, 2**70],
    "seed": [*NOT_INTEGER, 2**32, 9_300_000_000_000, -5],
}
KINDS = {
    "int": NOT_INTEGER,
    "float": NOT_NUMBER,
    "bool": NOT_BOOL,
    "path": NOT_PATH,
    "choice": NOT_CHOICE,
}
PATHS = ("init_from", "data", "data_root", "out")
CHOICES = ("schedule", "precision")


def _kind(field: dataclasses.Field) -> str:
    if field.name in PATHS:
        return "path"
    if field.name in CHOICES:
        return "choice"
    return str(field.type).split("|")[0].strip()


def _values(field: dataclasses.Field) -> list[Any]:
    values = HOSTILE.get(field.name) or KINDS[_kind(field)]
    if not str(field.type).endswith("None"):
        values = [*values, None]
    return values


def _setting_cases() -> list[Any]:
    cases = []
    for field in dataclasses.fields(TrainConfig):
        for i, value in enumerate(_values(field)):
            cases.append(pytest.param(field.name, value, id=f"{field.name}-{i}"))
    return cases


SETTING_CASES = _setting_cases()


def test_every_setting_has_hostile_cases() -> None:
    """A setting added later without a kind this file knows fails here rather than going untested."""
    covered = {c.values[0] for c in SETTING_CASES}
    assert covered == {f.name for f in dataclasses.fields(TrainConfig)}


def _named(exc: OptionError, field: str) -> bool:
    return (exc.param or "").split(".")[0] == field and field in str(exc)


@pytest.mark.parametrize(("field", "value"), SETTING_CASES)
def test_python_config_refuses_a_hostile_value(field: str, value: Any) -> None:
    with pytest.raises(OptionError) as info:
        TrainConfig(**{field: value})
    assert _named(info.value, field), str(info.value)


def _toml(value: Any) -> str | None:
    """``value`` as a TOML value, or None where TOML cannot say it (null, ints beyond 64 bits)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        parts = [_toml(v) for v in value]
        return None if None in parts else "[" + ", ".join(parts) + "]"  # type: ignore[arg-type]
    parts = [_toml(v) for v in value.values()]
    if None in parts:
        return None
    return "{" + ", ".join(f"{k} = {p}" for k, p in zip(value, parts)) + "}"


def _yaml(value: Any) -> str:
    return yaml.safe_dump({"x": value}, default_flow_style=True)[len("{x: ") : -2]


def _file_cases(fmt: str) -> list[Any]:
    cases = []
    for case in SETTING_CASES:
        field, value = case.values
        text = _toml(value) if fmt == "toml" else _yaml(value)
        if text is not None:
            cases.append(pytest.param(field, text, id=case.id))
    return cases


@pytest.mark.parametrize(("fmt", "field", "text"), [
    *(pytest.param("toml", *c.values, id=f"toml-{c.id}") for c in _file_cases("toml")),
    *(pytest.param("yaml", *c.values, id=f"yaml-{c.id}") for c in _file_cases("yaml")),
])  # fmt: skip
def test_config_file_refuses_a_hostile_value_naming_field_and_file(
    tmp_path: Path, fmt: str, field: str, text: str
) -> None:
    path = tmp_path / f"run.{fmt}"
    path.write_text(f"{field} = {text}\n" if fmt == "toml" else f"{field}: {text}\n", encoding="utf-8")
    with pytest.raises(OptionError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and _named(info.value, field), message
    assert info.value.source == str(path)


def _deep_toml() -> str:
    return "x = " + "[" * 20_000 + "]" * 20_000 + "\n"


def _dotted_toml() -> str:
    return ".".join(["a"] * 5_000) + " = 1\n"


def _deep_yaml() -> str:
    return "x: " + "[" * 20_000 + "]" * 20_000 + "\n"


def _yaml_bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


BAD_FILES = [
    pytest.param("deep.toml", _deep_toml(), "nests deeper", id="toml-20000-deep"),
    pytest.param("dotted.toml", _dotted_toml(), "nests deeper", id="toml-5000-dotted-keys"),
    pytest.param("deep.yaml", _deep_yaml(), "nests deeper", id="yaml-20000-deep"),
    pytest.param("bomb.yaml", _yaml_bomb(), "aliases expand", id="yaml-alias-bomb"),
    pytest.param("loop.yaml", "a: &a [*a]\n", "alias", id="yaml-self-alias"),
    pytest.param(
        "block.yaml", "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 60)), "nests", id="yaml-block"
    ),
    pytest.param("big.toml", "# " + "x" * (1 << 20) + "\n", "bytes", id="toml-over-1mib"),
    pytest.param("folder.toml", None, "cannot read config file", id="a-folder"),
    pytest.param("latin1.toml", b'data = "caf\xe9"\n', "not UTF-8", id="toml-not-utf8"),
    pytest.param("list.yaml", "- 1\n- 2\n", "table of settings", id="yaml-top-level-list"),
    pytest.param(
        "code.yaml", "x: !!python/object/apply:os.system [echo hi]\n", "not valid YAML", id="yaml-tag"
    ),
    pytest.param("broken.toml", "steps = [", "not valid TOML", id="toml-syntax"),
    pytest.param("resume.toml", "resume = true\n", "resume needs init_from", id="toml-resume-alone"),
    pytest.param("unknown.toml", "stepz = 3\n", "unknown training setting", id="toml-unknown-key"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES)
def test_hostile_config_files_end_in_one_line_naming_the_file(
    tmp_path: Path, name: str, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(OptionError) as info:
        load_config(path)
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)
    result = CliRunner().invoke(cli, ["train", "--config", str(path), "--steps", "1"])
    assert result.exit_code in (1, 2) and _one_error_line(result.output, name), result.output


@pytest.mark.parametrize("fmt", ["toml", "yaml"])
def test_a_byte_order_mark_is_accepted(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"bom.{fmt}"
    body = "steps = 7\nlr = 0.01\n" if fmt == "toml" else "steps: 7\nlr: 0.01\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.replace("\n", "\r\n").encode())
    config = load_config(path)
    assert (config.steps, config.lr) == (7, 0.01)


def test_the_cli_names_the_files_field_in_one_line(tmp_path: Path) -> None:
    """The issue's examples, through ``vqkit train --config`` (the file's spelling of the field, not a flag)."""
    for line, field in [
        ('model = "conv3"', "model"),
        ("model = [1, 2]", "model"),
        ('loss_options = "x"', "loss_options"),
        ('seed = "x"', "seed"),
        ("seed = 9300000000000", "seed"),
        ("data = 5", "data"),
        ("device = 7", "device"),
        ("init_from = 5", "init_from"),
        ('csv = "no"', "csv"),
        ("data_memory_gb = 1e308", "data_memory_gb"),
    ]:
        path = tmp_path / "c.toml"
        path.write_text(line + "\n")
        result = CliRunner().invoke(cli, ["train", "--config", str(path)])
        out = result.output
        assert result.exit_code == 1 and out.startswith(f"Error: {path}: {field}") and out.count("\n") == 1, (
            out
        )


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--seed", str(2**64)),
        ("--seed", str(2**63)),
        ("--seed", "9300000000000"),
        ("--seed", "-1"),
        ("--data-memory-gb", "1e308"),
        ("--data-memory-gb", "nan"),
        ("--lr", "inf"),
        ("--augment-scale", "nan"),
        ("--steps", str(10**30)),
        ("--batch-size", str(2**40)),
        ("--data-workers", "100000"),
        ("--device", "tpu"),
    ],
)
def test_a_hostile_flag_is_one_line_naming_it(tmp_path: Path, flag: str, value: str) -> None:
    # the flag comes last: click takes the last of a repeated option
    result = CliRunner().invoke(cli, ["train", "--steps", "1", "-o", str(tmp_path / "r"), flag, value])
    assert result.exit_code != 0 and _one_error_line(result.output, flag), result.output


def _one_error_line(output: str, flag: str) -> bool:
    """One ``Error: ...`` line naming ``flag`` (click's own refusals add a usage hint above it), no traceback."""
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    return len(errors) == 1 and flag in errors[0] and "Traceback" not in output


# --- what vqkit writes it reads back ------------------------------------------------------------------------
ODD_NAMES = [
    "plain",
    "caf\u00e9 \u00fcber",
    "emoji \U0001f600\U0001f308",
    'quote " and back\\slash',
    "tab\tnewline\ncontrol\x01del\x7f",
    "\u4e2d\u6587",
    "\u200bzero-width",
]
if POSIX_BYTES:
    ODD_NAMES.append(os.fsdecode(b"latin1-\xe9-\xff"))


@pytest.mark.parametrize("name", ODD_NAMES, ids=range(len(ODD_NAMES)))
def test_config_toml_reads_back_any_name(tmp_path: Path, name: str) -> None:
    config = TrainConfig(data=str(tmp_path / name), loss_options={"lpips": {"weights": name}})
    path = write_config_toml(tmp_path / "config.toml", config.to_dict(run_control=False))
    back = load_config(path)
    assert back.data == config.data and back.loss_options == config.loss_options
    assert back.to_dict() == config.to_dict()


def _image_folder(folder: Path, n: int = 12, size: int = 8) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        write_image(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), folder / f"{i:02d}.png")


@pytest.mark.skipif(not POSIX_BYTES, reason="needs a file system that takes any bytes as a name")
def test_a_run_on_odd_folder_names_writes_a_config_that_trains_again(tmp_path: Path) -> None:
    for raw in ("d\U0001f600".encode(), b"d\xff\xfe"):
        data = Path(os.fsdecode(bytes(tmp_path) + b"/" + raw))
        _image_folder(data)
        out = tmp_path / f"run-{raw.hex()}"
        fast = ["--steps", "1", "--eval-every", "0", "--batch-size", "4", "--eval-images", "4", "-q"]
        result = CliRunner().invoke(cli, ["train", "--data", str(data), "-o", str(out), *fast])
        assert result.exit_code == 0, result.output
        again = CliRunner().invoke(
            cli, ["train", "--config", str(out / "config.toml"), "-o", str(out) + "b", "-q"]
        )
        assert again.exit_code == 0, again.output
        assert load_config(out / "config.toml").data == str(data)


# --- names that are not UTF-8, in folders and shards --------------------------------------------------------
@pytest.mark.skipif(not POSIX_BYTES, reason="needs a file system that takes any bytes as a name")
def test_names_that_are_not_utf8_are_read_or_skipped_with_a_line(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    _image_folder(folder, n=20)
    os.rename(bytes(folder / "03.png"), bytes(folder) + b"/\xff\xfe03.png")
    (Path(os.fsdecode(bytes(folder) + b"/bad\xe9.png"))).write_bytes(b"not an image")
    with pytest.raises(VQKitError, match=r"bad.*\.png"):
        load_images(str(folder), split="all")
    with pytest.warns(UserWarning, match=r"skipped 1 of 21 image.*bad.*\.png"):
        images = load_images(str(folder), split="all", skip_bad=True)
    assert len(images) == 20  # the non-UTF-8 image is read, the broken one skipped
    with warnings.catch_warnings():  # the split holding the broken file says so again
        warnings.simplefilter("ignore")
        train, test = (load_images(str(folder), split=s, skip_bad=True) for s in ("train", "test"))
    assert len(train) + len(test) == 20
    result = pack_folder(folder, tmp_path / "shards", shard_size=8, skip_bad=True)
    assert result.images == 20 and len(result.skipped) == 1
    out = CliRunner().invoke(
        cli,
        ["train", "--data", str(tmp_path / "shards"), "--steps", "1", "--eval-every", "0"]
        + ["--batch-size", "4", "--eval-images", "4", "-q", "-o", str(tmp_path / "r")],
    )
    assert out.exit_code == 0, out.output


# --- the Python API -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.manual_seed(0)
    model = vqkit.build_model(channels=1, image_size=16, latent_dim=4, codebook_size=8, seed=0)
    root = tmp_path_factory.mktemp("api")
    path = vqkit.save(model, root / "m.safetensors")
    prior = CodePrior(PriorSpec(grid=model.grid, codebook_size=8, width=8, layers=1, heads=1)).eval()
    images = root / "imgs"
    _image_folder(images, n=4)
    return {"model": model, "path": path, "prior": prior, "root": root, "images": images}


# (function, the hostile argument, the parameter the error must name)
_NO_CUDA = [] if torch.cuda.is_available() else [("load-cuda", "load", {"device": "cuda"}, "device")]
_API: list[tuple[str, str, dict[str, Any], str]] = [
    ("load-None", "load", {"path": None}, "path"),
    ("load-5", "load", {"path": 5}, "path"),
    ("load-list", "load", {"path": ["m"]}, "path"),
    ("load-device-nope", "load", {"device": "nope"}, "device"),
    ("load-device-5", "load", {"device": 5}, "device"),
    *_NO_CUDA,
    ("read_spec-None", "read_spec", {"path": None}, "path"),
    ("save-not-a-model", "save", {"model": "m"}, "model"),
    ("save-path-None", "save", {"path": None}, "path"),
    ("save-layout", "save", {"layout": "zip"}, "layout"),
    ("save-metadata-list", "save", {"metadata": ["a"]}, "metadata"),
    ("save-metadata-int", "save", {"metadata": {"a": 1}}, "metadata"),
    ("save-metadata-spec", "save", {"metadata": {"vqkit.spec": "{}"}}, "metadata"),
    ("build-encoder_options-list", "build", {"encoder_options": [1]}, "encoder_options"),
    ("build-quantizer_options-str", "build", {"quantizer_options": "beta=1"}, "quantizer_options"),
    ("build-encoder-5", "build", {"encoder": 5}, "encoder"),
    ("build-preset-list", "build", {"preset": ["original"]}, "preset"),
    ("build-seed-x", "build", {"seed": "x"}, "seed"),
    ("build-seed-2**70", "build", {"seed": 2**70}, "seed"),
    ("build-seed-9.3e12", "build", {"seed": 9_300_000_000_000}, "seed"),
    ("build-seed-negative", "build", {"seed": -1}, "seed"),
    ("build-seed-nan", "build", {"seed": NAN}, "seed"),
    ("build-channels-x", "build", {"channels": "x"}, "channels"),
    ("build-image_size-huge", "build", {"image_size": 10**9}, "image_size"),
    ("build-latent_dim-0", "build", {"latent_dim": 0}, "latent_dim"),
    ("build_from_spec-dict", "build_from_spec", {"spec": {}}, "spec"),
    ("build_from_spec-seed", "build_from_spec", {"seed": 2**64}, "seed"),
    ("sample-temperature-0", "sample", {"temperature": 0}, "temperature"),
    ("sample-temperature-nan", "sample", {"temperature": NAN}, "temperature"),
    ("sample-temperature-inf", "sample", {"temperature": INF}, "temperature"),
    ("sample-temperature-negative", "sample", {"temperature": -1.0}, "temperature"),
    ("sample-temperature-str", "sample", {"temperature": "hot"}, "temperature"),
    ("sample-top_k-0", "sample", {"top_k": 0}, "top_k"),
    ("sample-top_k-negative", "sample", {"top_k": -3}, "top_k"),
    ("sample-top_k-float", "sample", {"top_k": 2.5}, "top_k"),
    ("sample-top_k-beyond-codebook", "sample", {"top_k": 9}, "top_k"),
    ("sample-n-x", "sample", {"n": "x"}, "n"),
    ("sample-n-0", "sample", {"n": 0}, "n"),
    ("sample-n-huge", "sample", {"n": 10**12}, "n"),
    ("sample-seed-2**64", "sample", {"seed": 2**64}, "seed"),
    ("sample-seed-x", "sample", {"seed": "x"}, "seed"),
    ("sample-device-nope", "sample", {"device": "nope"}, "device"),
    ("sample-prior-5", "sample", {"prior": 5}, "prior"),
    ("sample-prefix-list", "sample", {"prefix": [[1]]}, "prefix"),
    ("sample-model-str", "sample", {"model": "m"}, "model"),
    ("uniform-temperature-0", "sample", {"prior": "uniform", "temperature": 0}, "temperature"),
    ("uniform-top_k-0", "sample", {"prior": "uniform", "top_k": 0}, "top_k"),
    ("uniform-seed-huge", "sample", {"prior": "uniform", "seed": 2**63}, "seed"),
    ("sample_codes-temperature-nan", "sample_codes", {"temperature": NAN}, "temperature"),
    ("sample_codes-top_k-0", "sample_codes", {"top_k": 0}, "top_k"),
    ("sample_codes-batch_size-0", "sample_codes", {"batch_size": 0}, "batch_size"),
    ("sample_codes-prior-str", "sample_codes", {"prior": "p"}, "prior"),
    ("uniform_codes-n-negative", "uniform_codes", {"n": -4}, "n"),
    ("uniform_codes-seed-huge", "uniform_codes", {"seed": 2**64}, "seed"),
    ("interpolate-steps-1", "interpolate", {"steps": 1}, "steps"),
    ("interpolate-steps-x", "interpolate", {"steps": "x"}, "steps"),
    ("interpolate-a-list", "interpolate", {"a": [0.0]}, "a"),
    ("pack-prefix-None", "pack", {"prefix": None}, "prefix"),
    ("pack-prefix-path", "pack", {"prefix": "../x"}, "prefix"),
    ("pack-shard_size-x", "pack", {"shard_size": "x"}, "shard_size"),
    ("pack-shard_size-0", "pack", {"shard_size": 0}, "shard_size"),
    ("pack-shard_size-nan", "pack", {"shard_size": NAN}, "shard_size"),
    ("pack-shard_size-huge", "pack", {"shard_size": 10**12}, "shard_size"),
    ("pack-folder-None", "pack", {"folder": None}, "folder"),
    ("pack-skip_bad-str", "pack", {"skip_bad": "no"}, "skip_bad"),
    ("pack-progress-int", "pack", {"progress": 5}, "progress"),
    ("train_prior-seed", "train_prior", {"config": PriorTrainConfig(seed=2**70)}, "seed"),
    ("train_prior-warmup", "train_prior", {"config": PriorTrainConfig(warmup=-1)}, "warmup"),
    ("train_prior-config-dict", "train_prior", {"config": {"steps": 1}}, "config"),
    ("train_prior-out-None", "train_prior", {"out": None}, "out"),
    ("train_prior-model-5", "train_prior", {"model": 5}, "model"),
    ("evaluate-batch_size-0", "evaluate", {"batch_size": 0}, "batch_size"),
    ("evaluate-images-list", "evaluate", {"images": [[1]]}, "images"),
    ("reconstruct-model-str", "reconstruct", {"model": "m"}, "model"),
    ("load_images-skip_bad-str", "load_images", {"skip_bad": "no"}, "skip_bad"),
    ("load_images-image_size-x", "load_images", {"image_size": "x"}, "image_size"),
    ("export-out_dir-None", "export", {"out_dir": None}, "out_dir"),
    ("export-num_images-x", "export", {"num_images": "x"}, "num_images"),
    ("export-num_images-0", "export", {"num_images": 0}, "num_images"),
    ("export-tolerance-nan", "export", {"tolerance": NAN}, "tolerance"),
    ("export-tie_tolerance-negative", "export", {"tie_tolerance": -1.0}, "tie_tolerance"),
    ("export-format-5", "export", {"format": 5}, "format"),
    ("export-options-list", "export", {"options": [1]}, "options"),
    ("export-validate-str", "export", {"validate": "no"}, "validate"),
    ("TrainConfig-data-5", "TrainConfig", {"data": 5}, "data"),
    ("TrainConfig-seed-2**70", "TrainConfig", {"seed": 2**70}, "seed"),
]
API_CASES = [pytest.param(fn, kwargs, param, id=label) for label, fn, kwargs, param in _API]


def _call(small: dict[str, Any], fn: str, kwargs: dict[str, Any]) -> Any:
    m, x = small["model"], torch.zeros(1, 1, 16, 16)
    calls: dict[str, Callable[[], Any]] = {
        "load": lambda: vqkit.load(**{"path": small["path"], **kwargs}),
        "read_spec": lambda: vqkit.read_spec(**kwargs),
        "save": lambda: vqkit.save(**{"model": m, "path": small["root"] / "s.safetensors", **kwargs}),
        "build": lambda: vqkit.build_model(**{"channels": 1, "image_size": 16, **kwargs}),
        "build_from_spec": lambda: vqkit.build_from_spec(**{"spec": m.spec, **kwargs}),
        "sample": lambda: sample_images(**{"model": m, "prior": small["prior"], "n": 2, **kwargs}),
        "sample_codes": lambda: sample_codes(**{"prior": small["prior"], "n": 2, **kwargs}),
        "uniform_codes": lambda: uniform_codes(**{"model": m, "n": 2, **kwargs}),
        "interpolate": lambda: interpolate(**{"model": m, "a": x[0], "b": x[0], **kwargs}),
        "pack": lambda: pack_folder(**{"folder": small["images"], "out": small["root"] / "p", **kwargs}),
        "train_prior": lambda: train_prior(**{"model": m, "out": small["root"] / "prior", **kwargs}),
        "evaluate": lambda: evaluate(**{"model": m, "images": x, "lpips": None, **kwargs}),
        "reconstruct": lambda: reconstruct(**{"model": m, "images": x, **kwargs}),
        "load_images": lambda: load_images(str(small["images"]), **kwargs),
        "TrainConfig": lambda: TrainConfig(**kwargs),
        "export": lambda: export(**{"model_or_path": m, "out_dir": small["root"] / "exp", **kwargs}),
    }
    return calls[fn]()


@pytest.mark.parametrize(("fn", "kwargs", "param"), API_CASES)
def test_public_functions_name_the_bad_argument(
    small: dict[str, Any], fn: str, kwargs: dict[str, Any], param: str
) -> None:
    with pytest.raises(VQKitError) as info:
        _call(small, fn, kwargs)
    assert param in str(info.value), str(info.value)
    if isinstance(info.value, OptionError):
        assert info.value.param == param


def test_deep_nesting_in_model_files_is_refused_not_a_recursion(tmp_path: Path) -> None:
    model = vqkit.build_model(channels=1, image_size=16, latent_dim=4, codebook_size=8)
    folder = vqkit.save(model, tmp_path / "hf/", layout="hf")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps(config)[:-1] + ', "x": ' + "[" * 20_000 + "]" * 20_000 + "}"
    )
    with pytest.raises(ModelFileError, match="nests deeper"):
        vqkit.load(folder)
    from safetensors.torch import save_file

    deep = '{"encoder": ' + "[" * 20_000 + "]" * 20_000 + "}"
    save_file(
        {"w": torch.zeros(1)},
        str(tmp_path / "deep.safetensors"),
        {"format": "vqkit.model", "vqkit.spec": deep},
    )
    with pytest.raises(ModelFileError, match="nests deeper"):
        vqkit.load(tmp_path / "deep.safetensors")


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--temperature", "0"], "--temperature"),
        (["--temperature", "nan"], "--temperature"),
        (["--top-k", "0"], "--top-k"),
        (["--seed", str(2**64)], "--seed"),
        (["--seed", "9300000000000"], "--seed"),
    ],
)
def test_vqkit_sample_refuses_in_one_line(small: dict[str, Any], args: list[str], flag: str) -> None:
    out = small["root"] / "s.png"
    result = CliRunner().invoke(
        cli, ["sample", str(small["path"]), "--prior", "uniform", "-o", str(out), *args]
    )
    assert result.exit_code != 0 and _one_error_line(result.output, flag), result.output
    assert not out.exists()


def test_careful_values_of_other_types_are_taken_as_meant() -> None:
    """The check refuses what is wrong, not what is merely spelled differently: numpy scalars, an int for a
    float, a whole float for an int, a Path for a path, a list for betas."""
    config = TrainConfig(
        seed=np.int64(3), lr=np.float32(0.5), steps=40.0, betas=[0.5, 0.9], data=Path("imgs")
    )
    assert (config.seed, config.lr, config.steps, config.betas, config.data) == (
        3,
        0.5,
        40,
        (0.5, 0.9),
        "imgs",
    )
    assert type(config.seed) is int and type(config.steps) is int and type(config.lr) is float


def test_vqkit_prior_train_refuses_a_huge_seed_in_one_line(small: dict[str, Any]) -> None:
    out = small["root"] / "prior-run"
    result = CliRunner().invoke(
        cli, ["prior", "train", str(small["path"]), "-o", str(out), "--seed", str(2**70)]
    )
    assert result.exit_code != 0 and _one_error_line(result.output, "--seed"), result.output
    assert not out.exists()


def test_a_decompression_bomb_is_refused_from_its_header_and_skipped_with_a_line(tmp_path: Path) -> None:
    """A 1-bit PNG of 9000 x 9000 pixels takes a few KB on disk and would decode to 243 MB of RGB."""
    from PIL import Image

    folder = tmp_path / "imgs"
    _image_folder(folder, n=12)
    Image.new("1", (9000, 9000)).save(folder / "bomb.png")
    assert (folder / "bomb.png").stat().st_size < 100_000
    with pytest.raises(VQKitError, match=r"bomb\.png: it claims 9000x9000 pixels"):
        load_images(str(folder), split="all", image_size=8)
    with pytest.warns(UserWarning, match=r"skipped 1 of 13 image.*bomb\.png"):
        assert len(load_images(str(folder), split="all", image_size=8, skip_bad=True)) == 12
    result = pack_folder(folder, tmp_path / "shards", skip_bad=True)
    assert result.images == 12 and result.skipped[0][0] == "bomb.png"


def test_a_truncated_shard_is_refused_never_half_read(tmp_path: Path) -> None:
    """Cut anywhere, a shard is either refused naming it or still read whole (a cut in the end padding)."""
    from vqkit.data.shards import index_shard

    _image_folder(tmp_path / "imgs", n=30)
    shard = pack_folder(tmp_path / "imgs", tmp_path / "shards").shards[0]
    data = shard.read_bytes()
    cut = tmp_path / "cut.tar"
    for length in range(512, len(data), 101):
        cut.write_bytes(data[:length])
        try:
            assert len(index_shard(cut)) == 30, length
        except VQKitError as exc:
            assert "shard" in str(exc) and "cut.tar" in str(exc), str(exc)  # "is truncated", "cannot read"
    shard.write_bytes(data[: len(data) // 2])
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "shards"), "-o", str(tmp_path / "r")])
    assert result.exit_code == 1 and _one_error_line(result.output, "is truncated"), result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["build", "--seed", str(2**70)], "--seed"),
        (["build", "--seed", "9300000000000"], "--seed"),
        (["export", "{model}", "-o", "{out}", "--tolerance", "nan"], "--tolerance"),
        (["export", "{model}", "-o", "{out}", "--tie-tolerance", "inf"], "--tie-tolerance"),
    ],
)
def test_any_command_names_its_flag_for_a_library_refusal(
    small: dict[str, Any], tmp_path: Path, command: list[str], flag: str
) -> None:
    args = [a.format(model=small["path"], out=tmp_path / "exp") for a in command]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and _one_error_line(result.output, flag), result.output
    assert not (tmp_path / "exp").exists()


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_config_file_is_refused_after_the_size_limit() -> None:
    with pytest.raises(OptionError, match="/dev/zero is over 1,048,576 bytes"):
        load_config("/dev/zero")
