"""Importing a diffusers ``VQModel`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

diffusers' VQModel is taming's VQGAN under other names: ``down_blocks.i.resnets.j`` is ``down.i.block.j``,
the decoder's ``up_blocks`` run from the lowest resolution (``up_blocks.k`` is ``up.(n-1-k)``), attention
projections are linear layers (``to_q``; ``query`` in older files) where taming has 1x1 convs, and a
width-changing block's 1x1 ``conv_shortcut`` is taming's ``nin_shortcut``. Its quantizer is taming's
(beta 0.25, legacy loss, no remap).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

import vqkit.plugins.vqgan.fields as f
from vqkit.errors import ModelFileError
from vqkit.importing import ImportPlan, importers, sha256
from vqkit.safeunpickle import load_checkpoint, tensors_of

CONFIG = "config.json"
# Looked for in this order, only inside the folder; safetensors first (nothing to unpickle).
WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)
ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "query": "q",
    "to_k": "k",
    "key": "k",
    "to_v": "v",
    "value": "v",
    "to_out.0": "proj_out",
    "proj_attn": "proj_out",
}
WHY = "the VQGAN layout taming-transformers defines"


def _resnet(rest: str) -> str:
    return rest.replace("conv_shortcut.", "nin_shortcut.", 1) if rest.startswith("conv_shortcut.") else rest


def _attention(rest: str) -> str | None:
    for theirs, ours in ATTENTION.items():
        if rest.startswith(theirs + "."):
            return ours + rest[len(theirs) :]
    return None


def _mid(part: str, rest: str) -> str | None:
    m = re.fullmatch(r"(resnets\.([01])|attentions\.0)\.(.+)", rest)
    if m is None:
        return None
    if m.group(2) is not None:
        return f"{part}.mid.block_{int(m.group(2)) + 1}.{_resnet(m.group(3))}"
    attn = _attention(m.group(3))
    return f"{part}.mid.attn_1.{attn}" if attn else None


def _level(part: str, level: int, rest: str) -> str | None:
    m = re.fullmatch(r"resnets\.(\d+)\.(.+)", rest)
    if m is not None:
        return (
            f"{part}.{'down' if part == 'encoder' else 'up'}.{level}.block.{m.group(1)}.{_resnet(m.group(2))}"
        )
    m = re.fullmatch(r"(downsamplers|upsamplers)\.0\.conv\.(.+)", rest)
    if m is not None:
        kind = "downsample" if m.group(1) == "downsamplers" else "upsample"
        return f"{part}.{'down' if part == 'encoder' else 'up'}.{level}.{kind}.conv.{m.group(2)}"
    return None


TOP = {
    "quant_conv.": "encoder.quant_conv.",
    "post_quant_conv.": "decoder.post_quant_conv.",
    "quantize.embedding.": "quantizer.embedding.",
}
ENDS = {"conv_in.": "conv_in.", "conv_norm_out.": "norm_out.", "conv_out.": "conv_out."}


def vqkit_name(key: str, levels: int) -> str | None:
    """diffusers' name of a VQModel tensor -> the vqgan components' name (None: not one of the VQGAN's)."""
    for theirs, ours in TOP.items():
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder"):
        return None
    for theirs, ours in ENDS.items():
        if rest.startswith(theirs):
            return f"{part}.{ours}{rest[len(theirs) :]}"
    if rest.startswith("mid_block."):
        return _mid(part, rest[len("mid_block.") :])
    m = re.fullmatch(r"(down_blocks|up_blocks)\.(\d+)\.(.+)", rest)
    if m is None:
        return None
    level = int(m.group(2)) if m.group(1) == "down_blocks" else levels - 1 - int(m.group(2))
    return _level(part, level, m.group(3))


def convert(tensors: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in tensors.items():
        name = vqkit_name(key, levels) or key  # an unknown name is reported by the shape check
        if value.dim() == 2 and (".attn_1." in name or ".attn." in name) and name.endswith(".weight"):
            value = value[:, :, None, None]  # a linear projection is a 1x1 conv
        out[name] = value
    return out


def _weights(folder: Path) -> Path:
    root = folder.resolve()
    for name in WEIGHTS:
        path = folder / name
        if path.is_file():
            if not path.resolve().is_relative_to(root):
                raise ModelFileError(f"{path} points outside {folder}; not following it")
            return path
    raise ModelFileError(f"{folder}: no weights file ({', '.join(WEIGHTS)})")


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise ModelFileError(f"{path} is not a readable safetensors file ({exc})") from None
    return tensors_of(load_checkpoint(path), str(path))


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} is not a JSON object")
    return data


def _architecture(cfg: dict[str, Any], where: Path) -> dict[str, Any]:
    """The vqgan options a diffusers VQModel config describes (every field checked)."""
    f.require(cfg, "_class_name", where, ("VQModel",), "the VQGAN")
    f.require(cfg, "act_fn", where, ("silu",), WHY, default="silu")
    f.require(cfg, "norm_type", where, ("group",), WHY, default="group")
    widths = f.integers(cfg, "block_out_channels", where, default=[64])
    if not widths or any(w % widths[0] for w in widths):
        raise f.problem(where, "block_out_channels", f"must be multiples of its first entry, got {widths}")
    for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = f.get(cfg, key, where, [kind])
        if not isinstance(types, list) or types != [kind] * len(widths):
            raise f.problem(where, key, f"must be {len(widths)} x {kind!r} ({WHY}), got {types!r}")
    return f.vqgan_options(
        ch=widths[0],
        ch_mult=[w // widths[0] for w in widths],
        num_res_blocks=f.integer(cfg, "layers_per_block", where, low=0, default=1),
        attn_resolutions=[],
        z_channels=f.integer(cfg, "latent_channels", where, default=3),
        resolution=f.integer(cfg, "sample_size", where, default=32),
        norm_groups=f.integer(cfg, "norm_num_groups", where, default=32),
        mid_attention=f.flag(cfg, "mid_block_add_attention", where, default=True),
        dropout=0.0,
    )


@importers.register("diffusers")
class DiffusersVQModel:
    """A diffusers ``VQModel`` folder: ``config.json`` and its weights (safetensors, or a pickled ``.bin``
    read without running code)."""

    @staticmethod
    def recognises(source: Path, config: Path | None) -> bool:
        return source.is_dir() and (source / CONFIG).is_file()

    @staticmethod
    def read(source: Path, config: Path | None) -> ImportPlan:
        if not source.is_dir():
            raise ModelFileError(f"{source}: a diffusers VQModel is a folder with {CONFIG} and its weights")
        where = config if config is not None else source / CONFIG
        cfg = _read_config(where)
        options = _architecture(cfg, where)
        channels = f.integer(cfg, "in_channels", where, default=3)
        if f.integer(cfg, "out_channels", where, default=3) != channels:
            raise f.problem(where, "out_channels", f"must equal in_channels ({channels}) for a tokenizer")
        z = options["z_channels"]
        latent = f.integer(cfg, "vq_embed_dim", where) if cfg.get("vq_embed_dim") is not None else z
        weights = _weights(source)
        return ImportPlan(
            format="diffusers",
            parts={"encoder": "vqgan", "quantizer": "vqgan", "decoder": "vqgan"},
            options={
                "encoder": options,
                "quantizer": {"beta": 0.25, "legacy": True, **f.PRETRAINED},
                "decoder": dict(options),
            },
            channels=channels,
            image_size=options["resolution"],
            latent_dim=latent,
            codebook_size=f.integer(cfg, "num_vq_embeddings", where, low=2, default=256),
            tensors=convert(_read_tensors(weights), len(options["ch_mult"])),
            config_path=where,
            fields={
                "quantizer.": "num_vq_embeddings/vq_embed_dim",
                "encoder.quant_conv.": "latent_channels/vq_embed_dim",
                "decoder.post_quant_conv.": "latent_channels/vq_embed_dim",
                "encoder.": "block_out_channels/layers_per_block/in_channels",
                "decoder.": "block_out_channels/layers_per_block/out_channels",
            },
            source={
                "format": "diffusers VQModel",
                "config": cfg,
                "weights": weights.name,
                "sha256": sha256(weights),
            },
        )
