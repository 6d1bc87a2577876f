"""Importing a taming-transformers (or latent-diffusion) VQGAN: a Lightning ``.ckpt`` and its YAML config.

The checkpoint is a pickle of the whole training state; it is read by :mod:`vqkit.safeunpickle` (nothing
in it is run) and only the VQGAN's tensors are kept: ``encoder.*``, ``decoder.*``, ``quant_conv``,
``post_quant_conv`` and ``quantize.*``. The loss (discriminator, LPIPS), EMA copies and optimizer state are
left out. The config's ``remap`` file is never opened: the ``used`` codes it lists are in the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import vqkit.plugins.vqgan.fields as f
from vqkit.errors import ModelFileError
from vqkit.importing import ImportPlan, importers, sha256
from vqkit.safeunpickle import load_checkpoint, tensors_of

# The classes whose weights are a VQGAN with taming's VectorQuantizer (beta 0.25, legacy loss).
TARGETS = (
    "taming.models.vqgan.VQModel",
    "ldm.models.autoencoder.VQModel",
    "ldm.models.autoencoder.VQModelInterface",
)
RENAME = {
    "encoder.": "encoder.",
    "decoder.": "decoder.",
    "quant_conv.": "encoder.quant_conv.",
    "post_quant_conv.": "decoder.post_quant_conv.",
    "quantize.embedding.": "quantizer.embedding.",
    "quantize.used": "quantizer.used",
}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise ModelFileError(f"{path} is YAML, which needs the PyYAML package (pip install pyyaml)") from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        first = (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise ModelFileError(f"{path} is not readable YAML ({first})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} is not a YAML table of settings")
    return data


def _architecture(dd: dict[str, Any], where: Path) -> tuple[dict[str, Any], int]:
    """The vqgan options of taming's ddconfig (every field checked), and the image channels."""
    if f.flag(dd, "double_z", where, default=True):
        raise f.problem(
            where, "double_z", "must be false: a VQ model's encoder gives z_channels, not twice that"
        )
    channels = f.integer(dd, "in_channels", where)
    if f.integer(dd, "out_ch", where) != channels:
        raise f.problem(where, "out_ch", f"must equal in_channels ({channels}) for a tokenizer")
    dropout = f.get(dd, "dropout", where, 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise f.problem(where, "dropout", f"must be a number in [0, 1), got {dropout!r}")
    options = f.vqgan_options(
        ch=f.integer(dd, "ch", where),
        ch_mult=f.integers(dd, "ch_mult", where),
        num_res_blocks=f.integer(dd, "num_res_blocks", where, low=0),
        attn_resolutions=f.integers(dd, "attn_resolutions", where),
        z_channels=f.integer(dd, "z_channels", where),
        resolution=f.integer(dd, "resolution", where),
        norm_groups=32,
        mid_attention=True,
        dropout=float(dropout),
    )
    if not options["ch_mult"]:
        raise f.problem(where, "ch_mult", "must list at least one level")
    return options, channels


def vqgan_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """The VQGAN's tensors under vqkit's names, and how many other tensors (training state) were left out."""
    out = {}
    for key, value in state.items():
        for theirs, ours in RENAME.items():
            if key.startswith(theirs):
                out[ours + key[len(theirs) :]] = value
                break
    return out, len(state) - len(out)


def _remap(
    params: dict[str, Any], tensors: dict[str, torch.Tensor], n_embed: int, where: Path
) -> dict[str, Any]:
    """The quantizer's remap options: the ``used`` codes come from the checkpoint, never from a file the
    config names."""
    if f.get(params, "remap", where, None) is None:
        tensors.pop("quantizer.used", None)
        return {}
    used = tensors.get("quantizer.used")
    if used is None or used.dim() != 1 or used.dtype.is_floating_point or used.numel() == 0:
        raise f.problem(where, "remap", "is set but the checkpoint holds no quantize.used list of codes")
    if int(used.min()) < 0 or int(used.max()) >= n_embed:
        raise f.problem(where, "remap", f"lists codes outside [0, {n_embed - 1}] in quantize.used")
    tensors["quantizer.used"] = used.long()
    # taming's VQModel leaves unknown_index at "random": here, the nearest used code
    return {"remap_used": int(used.numel()), "unknown_index": "random"}


@importers.register("taming")
class TamingVQModel:
    """A taming-transformers or latent-diffusion VQModel: a ``.ckpt`` (read without running code) and its
    YAML config (``model.target`` one of taming's or ldm's VQModel, ``model.params``)."""

    @staticmethod
    def recognises(source: Path, config: Path | None) -> bool:
        return source.is_file() and config is not None and config.suffix.lower() in (".yaml", ".yml")

    @staticmethod
    def read(source: Path, config: Path | None) -> ImportPlan:
        if config is None:
            raise ModelFileError(
                f"{source}: a taming-transformers checkpoint needs its YAML config (--config)"
            )
        model = f.table(_read_yaml(config), "model", config)
        target = f.require(model, "target", config, TARGETS, "a VQGAN with taming's VectorQuantizer")
        params = f.table(model, "params", config)
        options, channels = _architecture(f.table(params, "ddconfig", config), config)
        n_embed = f.integer(params, "n_embed", config, low=2)
        tensors, left_out = vqgan_tensors(tensors_of(load_checkpoint(source), str(source)))
        quantizer = {"beta": 0.25, "legacy": True, **f.PRETRAINED, **_remap(params, tensors, n_embed, config)}
        return ImportPlan(
            format="taming",
            parts={"encoder": "vqgan", "quantizer": "vqgan", "decoder": "vqgan"},
            options={"encoder": options, "quantizer": quantizer, "decoder": dict(options)},
            channels=channels,
            image_size=options["resolution"],
            latent_dim=f.integer(params, "embed_dim", config),
            codebook_size=n_embed,
            tensors=tensors,
            config_path=config,
            fields={
                "quantizer.": "n_embed/embed_dim",
                "encoder.quant_conv.": "embed_dim/ddconfig.z_channels",
                "decoder.post_quant_conv.": "embed_dim/ddconfig.z_channels",
                "encoder.": "ddconfig (ch, ch_mult, num_res_blocks, attn_resolutions, in_channels)",
                "decoder.": "ddconfig (ch, ch_mult, num_res_blocks, attn_resolutions, out_ch)",
            },
            source={
                "format": target,
                "config": {
                    "model": {
                        "target": target,
                        "params": {k: v for k, v in params.items() if k != "lossconfig"},
                    }
                },
                "checkpoint": source.name,
                "sha256": sha256(source),
                "tensors_left_out": left_out,
            },
        )
