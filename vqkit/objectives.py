"""Training objectives (reconstruction losses) and their weighted combination.

An objective is a registered component (``vqkit.registry.objectives``), built as ``cls(**options)``; the
built-ins (``mse``, ``l1``, ``ssim``, ``lpips``, ``patchgan``) register exactly as a third party's would. A loss
is spelled as terms joined by ``+``, each ``NAME`` or ``NAME:WEIGHT`` with optional inline options
``NAME(key=value,...)``: ``"l1+lpips:0.1+patchgan:0.1"``. The training loop calls :class:`Loss` only:

    loss_fn = build_loss("l1+patchgan:0.1", {"patchgan": {"start": 1000}}, device)
    rec, terms = loss_fn(x, recon, step=step, last_layer=decoder_last_layer(model.decoder))
    (rec + quantizer_loss).backward(); optimizer.step()
    loss_fn.update(x, recon.detach(), step=step)      # trainable objectives (a discriminator) take a step

An objective with ``adaptive_weight = True`` (``patchgan``) is scaled, as in VQGAN, by the ratio of the
gradient norms at the decoder's last layer of the other terms' weighted sum and of its own term, so that its
pull on the decoder stays comparable to the reconstruction's whatever the scale of its logits.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

from vqkit.errors import OptionError, VQKitError


class Objective(nn.Module):
    """Base of registered objectives: ``forward(x, recon, *, step, last_layer)`` -> a scalar fp32 loss.

    ``x`` and ``recon`` are ``[B, C, H, W]`` in the model's [-1, 1] range. ``step`` is the training step (an
    objective may stay silent before a start step: return a tensor that does not require grad, e.g. zeros).
    ``last_layer`` is the weight of the decoder's last layer, or None.

    Trainable objectives (``trainable = True``) own parameters and an optimizer of their own: ``update``
    takes one step of it on the detached reconstruction and returns scalar stats (tensors, never read back
    to the host), and ``training_state``/``load_training_state`` carry everything exact resumption needs
    (tensors and Python scalars only: the state is saved with ``torch.save`` and read with
    ``weights_only=True``). Their parameters are not the model's and are not saved in the model file.
    """

    trainable: bool = False
    adaptive_weight: bool = False

    def forward(  # pragma: no cover - contract
        self, x: torch.Tensor, recon: torch.Tensor, *, step: int, last_layer: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def weight_at(self, step: int) -> float:
        """A factor on this term's weight at ``step`` (a ramp after a start step), applied by the loss after
        any adaptive weight (which would otherwise cancel a ramp written into the term itself)."""
        return 1.0

    def update(self, x: torch.Tensor, recon: torch.Tensor, *, step: int) -> dict[str, torch.Tensor]:
        return {}

    def training_state(self) -> dict[str, Any]:
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        return None


# --- spelling ----------------------------------------------------------------------------------------------
_TERM = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(?:\((.*)\))?\s*(?::\s*(.*?))?\s*$", re.S)


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses (inline options may hold paths with ``+`` or ``,``)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _weight(text: str, term: str, spelling: str) -> float:
    try:
        w = float(text)
    except ValueError:
        raise OptionError(
            f"loss {spelling!r}: weight {text!r} of {term!r} is not a number", param="loss"
        ) from None
    if not math.isfinite(w) or w < 0:
        raise OptionError(
            f"loss {spelling!r}: weight of {term!r} must be a finite number >= 0, got {text}", param="loss"
        )
    return w


def _inline_options(text: str, term: str, spelling: str) -> dict[str, Any]:
    from vqkit.options import parse_value

    out: dict[str, Any] = {}
    for item in _split_top(text, ","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(
                f"loss {spelling!r}: option {item.strip()!r} of {term!r} is not KEY=VALUE", param="loss"
            )
        out[key.strip()] = parse_value(value.strip())
    return out


def parse_loss(text: str) -> list[tuple[str, float, dict[str, Any]]]:
    """``"l1+lpips:0.1+patchgan(start=500):0.1"`` -> ``[("l1", 1.0, {}), ("lpips", 0.1, {}),
    ("patchgan", 0.1, {"start": 500})]``. Names are not looked up here; errors name the problem."""
    if not isinstance(text, str) or not text.strip():
        raise OptionError("loss must name at least one objective, e.g. 'mse' or 'l1+lpips:0.1'", param="loss")
    if text.count("(") != text.count(")"):
        raise OptionError(f"loss {text!r}: unbalanced parentheses", param="loss")
    terms: list[tuple[str, float, dict[str, Any]]] = []
    for raw in _split_top(text, "+"):
        m = _TERM.match(raw)
        if not raw.strip() or m is None:
            raise OptionError(
                f"loss {text!r}: cannot read term {raw.strip()!r}; write NAME or NAME:WEIGHT, "
                "terms joined by '+' (e.g. 'l1+lpips:0.1')",
                param="loss",
            )
        name, opts, weight = m.group(1), m.group(2), m.group(3)
        if any(name == t[0] for t in terms):
            raise OptionError(
                f"loss {text!r}: objective {name!r} appears twice; give it one weight", param="loss"
            )
        w = 1.0 if weight is None else _weight(weight, name, text)
        terms.append((name, w, _inline_options(opts, name, text) if opts else {}))
    return terms


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_format_value(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def format_loss(terms: list[tuple[str, float, dict[str, Any]]]) -> str:
    """The canonical spelling of parsed terms (weight 1 left out, inline options sorted)."""
    out = []
    for name, weight, opts in terms:
        text = name
        if opts:
            text += "(" + ",".join(f"{k}={_format_value(v)}" for k, v in sorted(opts.items())) + ")"
        if weight != 1.0:
            text += f":{weight!r}"
        out.append(text)
    return "+".join(out)


# --- the combination -----------------------------------------------------------------------------------------
def _ramp(objective: nn.Module, step: int) -> float:
    weight_at = getattr(objective, "weight_at", None)  # optional for objectives not derived from Objective
    return float(weight_at(step)) if callable(weight_at) else 1.0


class Loss(nn.Module):
    """The weighted sum of objectives the training loop minimises.

    ``forward`` returns ``(total, terms)``: the total reconstruction loss (fp32 scalar) and each objective's
    unweighted value, detached, keyed by its name. ``update`` steps every trainable objective and returns
    their stats keyed ``NAME.STAT``. ``spec`` is the canonical spelling, for the run's config.
    """

    def __init__(self, terms: list[tuple[str, float, Objective]], spec: str) -> None:
        super().__init__()
        self.spec = spec
        self.weights = {name: float(w) for name, w, _ in terms}
        self.objectives = nn.ModuleDict({name: obj for name, _, obj in terms})
        # The last adaptive weight of each adaptive objective (a tensor: reading it would sync the device).
        self._adaptive: dict[str, torch.Tensor] = {}

    @property
    def trainable(self) -> bool:
        return any(getattr(o, "trainable", False) for o in self.objectives.values())

    def forward(
        self, x: torch.Tensor, recon: torch.Tensor, *, step: int, last_layer: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        adaptive: list[str] = []
        for name, obj in self.objectives.items():
            value = obj(x, recon, step=step, last_layer=last_layer).float()
            values[name] = value
            if getattr(obj, "adaptive_weight", False):
                adaptive.append(name)
                continue
            w = self.weights[name] * _ramp(obj, step)
            term = value if w == 1.0 else value * w
            total = term if total is None else total + term
        base = total
        for name in adaptive:
            scale = self._adaptive_scale(base, values[name], last_layer)
            self._adaptive[name] = scale.detach()
            term = values[name] * (scale * (self.weights[name] * _ramp(self.objectives[name], step)))
            total = term if total is None else total + term
        if total is None:  # only adaptive terms and nothing to adapt to
            total = torch.zeros((), device=recon.device)
        return total, {name: v.detach() for name, v in values.items()}

    @staticmethod
    def _adaptive_scale(
        base: torch.Tensor | None, term: torch.Tensor, last_layer: torch.Tensor | None
    ) -> torch.Tensor:
        """VQGAN's adaptive weight ``|grad base| / (|grad term| + 1e-4)`` at the decoder's last layer,
        clamped to [0, 1e4] and detached. 1 when there is nothing to compare (no last layer, no other term,
        no gradient: evaluation, or a term that is silent before its start step)."""
        one = torch.ones((), device=term.device)
        if (
            last_layer is None
            or base is None
            or not torch.is_grad_enabled()
            or not term.requires_grad
            or not base.requires_grad
        ):
            return one
        (g_base,) = torch.autograd.grad(base, last_layer, retain_graph=True, allow_unused=True)
        (g_term,) = torch.autograd.grad(term, last_layer, retain_graph=True, allow_unused=True)
        if g_base is None or g_term is None:
            return one
        scale = g_base.norm() / (g_term.norm() + 1e-4)
        return scale.clamp(0.0, 1e4).detach()

    def update(self, x: torch.Tensor, recon: torch.Tensor, *, step: int) -> dict[str, torch.Tensor]:
        stats: dict[str, torch.Tensor] = {}
        for name, obj in self.objectives.items():
            if getattr(obj, "trainable", False):
                for key, value in obj.update(x, recon.detach(), step=step).items():
                    stats[f"{name}.{key}"] = value
        for name, scale in self._adaptive.items():
            stats[f"{name}.adaptive_weight"] = scale
        return stats

    def training_state(self) -> dict[str, Any]:
        return {
            name: obj.training_state()
            for name, obj in self.objectives.items()
            if getattr(obj, "trainable", False)
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise VQKitError("the loss's training state is not a dict")
        for name, obj in self.objectives.items():
            if not getattr(obj, "trainable", False):
                continue
            if name not in state:
                raise VQKitError(
                    f"the training state has nothing for objective {name!r} (loss {self.spec!r}); "
                    "it was saved by a run with a different loss"
                )
            obj.load_training_state(state[name])


def check_loss(text: str = "mse", options: dict[str, dict[str, Any]] | None = None) -> list[tuple[Any, dict]]:
    """Each term's registry entry and validated options, constructing nothing (no weights are read): an
    unknown objective or option is an :class:`OptionError` before a run reads any data."""
    from vqkit.discovery import load_plugins
    from vqkit.options import validate_options
    from vqkit.registry import objectives

    load_plugins()
    terms = parse_loss(text)
    options = dict(options or {})
    names = [t[0] for t in terms]
    for name in options:
        if name not in names:
            raise OptionError(
                f"options given for objective {name!r}, which is not in loss {format_loss(terms)!r}",
                param="loss_options",
            )
    out = []
    for name, _, inline in terms:
        entry = objectives.entry(name)
        out.append((entry, validate_options(entry, {**dict(options.get(name) or {}), **inline})))
    return out


def build_loss(
    text: str = "mse", options: dict[str, dict[str, Any]] | None = None, device: Any = None
) -> Loss:
    """Build the loss ``text`` spells from registered objectives. ``options[name]`` are that objective's
    options (inline options in the spelling take precedence over them)."""
    checked = check_loss(text, options)
    terms = parse_loss(text)
    built: list[tuple[str, float, Objective]] = []
    for (name, weight, _), (entry, opts) in zip(terms, checked, strict=True):
        try:
            obj = entry.obj(**opts)
        except VQKitError:
            raise
        except (ValueError, TypeError, AssertionError) as exc:
            raise OptionError(f"objective {name!r} rejected its settings: {exc}") from exc
        if not isinstance(obj, nn.Module):
            raise VQKitError(f"objective {name!r} did not build an nn.Module (got {type(obj).__name__})")
        built.append((name, weight, obj))
    loss = Loss(built, format_loss(terms))
    if device is not None:
        loss.to(device)
    return loss


def decoder_last_layer(decoder: nn.Module) -> torch.Tensor | None:
    """The weight of the decoder's last layer, for the adaptive weight of GAN-like objectives.

    A decoder may name it with a ``last_layer`` attribute (a parameter, or a module with a ``weight``);
    otherwise it is the weight of the last convolution or linear layer in module order (which is execution
    order for sequential decoders such as the built-ins). None when there is none.
    """
    named = getattr(decoder, "last_layer", None)
    if isinstance(named, torch.Tensor):
        return named
    if isinstance(named, nn.Module) and isinstance(getattr(named, "weight", None), torch.Tensor):
        return named.weight
    layers = [
        m
        for m in decoder.modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear))
        and isinstance(getattr(m, "weight", None), torch.Tensor)
    ]
    return layers[-1].weight if layers else None
