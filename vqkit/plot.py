"""Training curves of a run (loss, PSNR, codes used, learning rate) drawn from its ``metrics.jsonl`` to a PNG.

Drawn with Pillow alone (a dependency already), so plotting needs nothing more installed. The picture is
drawn at twice its size and scaled down, which smooths the lines.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqkit.errors import VQKitError
from vqkit.fileio import atomic_path
from vqkit.metrics_sinks import (
    METRICS_JSONL,
    finite_number,
    numeric_fields,
    read_metrics,
    record_kind,
    record_step,
    warn_skipped,
)

DEFAULT_NAME = "curves.png"

WIDTH = 1200  # pixels of the written PNG
PANEL_HEIGHT = 330
SCALE = 2  # drawn at this multiple, then scaled down (antialiasing)

BLUE, ORANGE, GREY = (31, 119, 180), (230, 110, 10), (130, 130, 130)
INK, SOFT_INK, GRID, FRAME = (30, 30, 30), (95, 95, 95), (232, 232, 232), (170, 170, 170)


@dataclass(frozen=True)
class Series:
    label: str
    kind: str  # "train" or "eval": which records it comes from
    key: str
    color: tuple[int, int, int]
    markers: bool = False
    dashed: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    series: tuple[Series, ...]
    from_zero: bool = False  # the y axis starts at 0 (counts, rates)
    log_if_wide: bool = False  # a log y axis when the values span more than LOG_SPAN


LOG_SPAN = 30.0
LIMIT = 1e15  # steps and values beyond this are garbage (a diverged run logs null), and would break the axes

PANELS = (
    Panel("loss", (Series("train", "train", "loss", BLUE),), log_if_wide=True),
    Panel(
        "PSNR (dB)",
        (Series("train", "train", "psnr", BLUE), Series("held-out", "eval", "psnr", ORANGE, markers=True)),
    ),
    Panel(
        "codes used",
        (
            Series("train", "train", "codes_used", BLUE),
            Series("held-out", "eval", "codes_used", ORANGE, markers=True),
        ),
        from_zero=True,
    ),
    # vqkit prior train's metrics
    Panel(
        "bits per image",
        (
            Series("train", "train", "train_bits_per_image", BLUE),
            Series("held-out", "train", "test_bits_per_image", ORANGE, markers=True),
            Series("uniform", "train", "uniform_bits_per_image", GREY, dashed=True),
        ),
    ),
    Panel("learning rate", (Series("lr", "train", "lr", BLUE),), from_zero=True),
)


@dataclass
class Curves:
    """What the records hold, sorted by step: ``points[(kind, key)] = [(step, value), ...]``."""

    points: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    last_eval: dict[str, Any] = field(default_factory=dict)
    split: str = ""


def plot_run(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Draw the training curves of the run at ``path`` (a run folder or its ``metrics.jsonl``) to ``out``
    (a ``.png``; by default ``curves.png`` beside the metrics). Returns the path written.

    Unreadable lines are skipped with a warning; an error if nothing in the file can be plotted.
    """
    metrics = metrics_file(path)
    target = Path(out) if out is not None else metrics.parent / DEFAULT_NAME
    if target.suffix.lower() != ".png":
        raise VQKitError(f"out must be a .png file, got {target}")
    if target.is_dir():
        raise VQKitError(f"out {target} is a folder; give a file name ending in .png")
    records, bad = read_metrics(metrics)
    if not records:
        if bad:
            raise VQKitError(
                f"{metrics} holds no metrics: none of its {bad} lines is a JSON record with a step "
                f"(give a run folder or its {METRICS_JSONL})"
            )
        raise VQKitError(f"{metrics} is empty: the run has not logged any metrics yet")
    warn_skipped(metrics, bad)
    curves = collect(records)
    panels = [panel for panel in PANELS if any(curves.points.get((s.kind, s.key)) for s in panel.series)]
    if not panels:
        raise VQKitError(
            f"{metrics} holds no curves to plot (no loss, psnr, codes_used or lr in its {len(records)} records)"
        )
    image = render(curves, panels, title=f"Training curves: {_plain(str(metrics.parent), 90)}")
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG")
    return target


def metrics_file(path: str | os.PathLike[str]) -> Path:
    """The ``metrics.jsonl`` that ``path`` names: the file itself or the one in a run folder."""
    path = Path(path)
    if path.is_dir():
        metrics = path / METRICS_JSONL
        if not metrics.is_file():
            raise VQKitError(f"{path} has no {METRICS_JSONL}: is it a run folder of vqkit train?")
        return metrics
    if not path.exists():
        raise VQKitError(f"no run folder or metrics file at {path}")
    return path


def collect(records: list[dict[str, Any]]) -> Curves:
    """The curves in ``records``, in step order. Where a step appears twice in a series (a run resumed from
    a checkpoint trains some steps again), the later line wins, as it would have in ``metrics.jsonl``."""
    curves = Curves()
    latest: dict[tuple[str, str], dict[int, float]] = {}
    for record in records:
        step = record_step(record)
        if step is None or abs(step) > LIMIT:  # read_metrics keeps only records with a step
            continue
        curves.steps.append(step)
        event = record.get("event")
        if event in ("start", "resume"):
            if event == "resume":
                curves.resumed_at.append(step)
            curves.config = _config_of(record) or curves.config
        kind = record_kind(record)
        if kind is None:
            continue
        for key, value in numeric_fields(record).items():
            if abs(value) > LIMIT:
                continue
            latest.setdefault((kind, key), {})[step] = value
        if kind == "eval" and step >= curves.last_eval.get("step", step):
            curves.last_eval = {**record, "step": step}
            curves.split = _plain(str(record.get("split", "")), 20)
    curves.points = {series: sorted(by_step.items()) for series, by_step in latest.items()}
    curves.resumed_at.sort()
    return curves


def _config_of(record: dict[str, Any]) -> dict[str, Any]:
    config = record.get("config")
    if isinstance(config, str):  # older runs stored it as a JSON string
        try:
            config = json.loads(config)
        except ValueError:
            return {}
    return config if isinstance(config, dict) else {}


# --- drawing -------------------------------------------------------------------------------------------


def render(curves: Curves, panels: list[Panel], *, title: str) -> Any:
    from PIL import Image, ImageDraw

    s = SCALE
    cols = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / cols)
    header = 74
    image = Image.new("RGB", (WIDTH * s, (header + rows * PANEL_HEIGHT + 10) * s), "white")
    draw = ImageDraw.Draw(image)
    fonts = _Fonts(s)
    draw.text((24 * s, 14 * s), title, fill=INK, font=fonts.title)
    draw.text(
        (24 * s, 44 * s),
        _fit(_summary(curves), fonts.small, (WIDTH - 48) * s),
        fill=SOFT_INK,
        font=fonts.small,
    )
    x_range = _padded_steps(curves.steps)
    panel_w = (WIDTH - 24) // cols
    for i, panel in enumerate(panels):
        x0 = 12 + (i % cols) * panel_w
        y0 = header + (i // cols) * PANEL_HEIGHT
        box = (x0 * s, y0 * s, (x0 + panel_w) * s, (y0 + PANEL_HEIGHT) * s)
        _draw_panel(draw, fonts, box, panel, curves, x_range)
    return image.resize((WIDTH, image.height // s), Image.LANCZOS)


class _Fonts:
    def __init__(self, s: int) -> None:
        from PIL import ImageFont

        self.title = ImageFont.load_default(size=22 * s)
        self.panel = ImageFont.load_default(size=17 * s)
        self.small = ImageFont.load_default(size=14 * s)
        self.tick = ImageFont.load_default(size=13 * s)


def _summary(curves: Curves) -> str:
    """One line: the run's settings and its last held-out evaluation."""
    c = curves.config
    parts = []
    model = c.get("model") if isinstance(c.get("model"), dict) else {}
    names = [_plain(str(model[k]), 24) for k in ("encoder", "quantizer", "decoder") if model.get(k)]
    if names:
        parts.append("model " + " + ".join(names))
    if c.get("data"):
        parts.append(f"data {_plain(str(c['data']), 40)}")
    for key, label in (("steps", "steps"), ("batch_size", "batch"), ("lr", "lr")):
        number = finite_number(c.get(key))
        if number is not None:
            parts.append(f"{label} {number:g}")
    if curves.resumed_at:
        parts.append("resumed at step " + ", ".join(str(s) for s in curves.resumed_at[:5]))
    e = curves.last_eval
    if e:
        psnr, used, size = (finite_number(e.get(k)) for k in ("psnr", "codes_used", "codebook_size"))
        held = f"held-out ({curves.split})" if curves.split else "held-out"
        bits = [f"PSNR {psnr:.2f} dB" if psnr is not None else ""]
        if used is not None:
            bits.append(f"codes used {used:g}" + (f" of {size:g}" if size is not None else ""))
        parts.append(f"{held} at step {e['step']}: " + ", ".join(b for b in bits if b))
    prior_bits = curves.points.get(("train", "test_bits_per_image"))  # a vqkit prior train run
    if prior_bits:
        step, bits = prior_bits[-1]
        parts.append(f"held-out {bits:.2f} bits per image at step {step:g}")
    return "   |   ".join(parts)


def _draw_panel(
    draw: Any, fonts: _Fonts, box: tuple[int, ...], panel: Panel, curves: Curves, x_range: Any
) -> None:
    s = SCALE
    left, top, right, bottom = box[0] + 70 * s, box[1] + 40 * s, box[2] - 18 * s, box[3] - 50 * s
    shown = [(sr, curves.points.get((sr.kind, sr.key), [])) for sr in panel.series]
    shown = [(sr, pts) for sr, pts in shown if pts]
    values = [v for _, pts in shown for _, v in pts]
    y_axis = _y_axis(values, panel)
    x_axis = Axis(*x_range)
    title = panel.title + (" (log scale)" if y_axis.log else "")
    if panel.series[0].key == "codes_used" and curves.last_eval.get("codebook_size"):
        size = finite_number(curves.last_eval.get("codebook_size"))
        title += f" (codebook {size:g})" if size is not None else ""
    draw.text((left, box[1] + 8 * s), title, fill=INK, font=fonts.panel)

    def px(step: float, value: float) -> tuple[float, float]:
        return (
            left + x_axis.frac(step) * (right - left),
            bottom - y_axis.frac(value) * (bottom - top),
        )

    for tick in y_axis.ticks():
        y = px(x_range[0], tick)[1]
        draw.line([(left, y), (right, y)], fill=GRID, width=s)
        label = y_axis.label(tick)
        w = draw.textlength(label, font=fonts.tick)
        draw.text((left - 8 * s - w, y), label, fill=SOFT_INK, font=fonts.tick, anchor="lm")
    for tick in x_axis.ticks():
        x = px(tick, y_axis.lo)[0]
        draw.line([(x, top), (x, bottom)], fill=GRID, width=s)
        draw.text((x, bottom + 7 * s), x_axis.label(tick), fill=SOFT_INK, font=fonts.tick, anchor="mt")
    draw.text(((left + right) / 2, bottom + 27 * s), "step", fill=SOFT_INK, font=fonts.tick, anchor="mt")
    for step in curves.resumed_at:
        if x_range[0] < step < x_range[1]:
            x = round(px(step, y_axis.lo)[0] / s) * s  # on a whole pixel of the written PNG: crisp
            _dashed(draw, [(x, top), (x, bottom)], GREY, 2 * s, dash=5 * s)
    draw.rectangle([left, top, right, bottom], outline=FRAME, width=s)

    for sr, pts in shown:
        xy = [px(step, v) for step, v in pts if y_axis.shows(v)]
        if sr.dashed:
            _dashed(draw, xy, sr.color, 2 * s, dash=8 * s)
        elif len(xy) > 1:
            draw.line(xy, fill=sr.color, width=2 * s, joint="curve")
        if sr.markers or len(xy) == 1:
            r = 3.5 * s
            for x, y in xy:
                draw.ellipse([x - r, y - r, x + r, y + r], fill=sr.color)
    _legend(draw, fonts, right, box[1] + 10 * s, [sr for sr, _ in shown])


def _legend(draw: Any, fonts: _Fonts, right: float, y: float, series: list[Series]) -> None:
    """Right-aligned on the panel's title line: a stroke of each colour and its label."""
    if len(series) < 2:
        return
    s = SCALE
    x = right
    for sr in reversed(series):
        w = draw.textlength(sr.label, font=fonts.small)
        x -= w
        draw.text((x, y + 9 * s), sr.label, fill=INK, font=fonts.small, anchor="lm")
        x -= 26 * s
        mid = y + 9 * s
        if sr.dashed:
            _dashed(draw, [(x, mid), (x + 20 * s, mid)], sr.color, 2 * s, dash=5 * s)
        else:
            draw.line([(x, mid), (x + 20 * s, mid)], fill=sr.color, width=2 * s)
        if sr.markers:
            r = 3.5 * s
            draw.ellipse([x + 10 * s - r, mid - r, x + 10 * s + r, mid + r], fill=sr.color)
        x -= 18 * s


def _dashed(draw: Any, xy: list[tuple[float, float]], color: Any, width: int, *, dash: float) -> None:
    """A dashed polyline: ``dash`` on, ``dash`` off, along its length."""
    on, left = True, dash
    for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        t = 0.0
        while length > 0 and t < length:
            step = min(left, length - t)
            if on:
                a, b = t / length, (t + step) / length
                draw.line(
                    [(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                    fill=color,
                    width=width,
                )
            t += step
            left -= step
            if left <= 0:
                on, left = not on, dash


# --- axes ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    lo: float
    hi: float
    log: bool = False
    step: float = 0.0  # the linear ticks' spacing (0: chosen from the range)

    def frac(self, v: float) -> float:
        if self.log:
            return (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return (v - self.lo) / (self.hi - self.lo)

    def shows(self, v: float) -> bool:
        return v > 0 if self.log else True

    def ticks(self) -> list[float]:
        if self.log:
            return _log_ticks(self.lo, self.hi)
        step = self.step or nice_step(self.lo, self.hi)
        first, last = math.ceil(self.lo / step - 1e-9), math.floor(self.hi / step + 1e-9)
        if not 0 <= last - first <= 40:  # float trouble at extreme magnitudes: just the ends
            return [self.lo, self.hi]
        return [i * step for i in range(first, last + 1)]

    def label(self, v: float) -> str:
        if self.log:
            return _short(f"{v:g}")
        return tick_label(v, self.step or nice_step(self.lo, self.hi), max(abs(self.lo), abs(self.hi)))


def _padded_steps(steps: list[int]) -> tuple[float, float]:
    lo, hi = float(min(steps)), float(max(steps))
    return (lo, hi) if hi > lo else (lo - 1, hi + 1)


def _y_axis(values: list[float], panel: Panel) -> Axis:
    lo, hi = min(values), max(values)
    if panel.log_if_wide and lo > 0 and hi / lo > LOG_SPAN:
        pad = (math.log10(hi) - math.log10(lo)) * 0.04
        return Axis(10 ** (math.log10(lo) - pad), 10 ** (math.log10(hi) + pad), log=True)
    if panel.from_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= max(abs(hi), abs(lo)) * 1e-9:  # flat: give it some height
        half = abs(hi) * 0.1 or 1.0
        lo, hi = lo - half, hi + half
    pad = (hi - lo) * 0.04  # a margin, so no curve runs along the frame
    return Axis(lo if panel.from_zero and lo == 0 else lo - pad, hi + pad)


def nice_step(lo: float, hi: float, target: int = 5) -> float:
    """A tick spacing of 1, 2 or 5 times a power of ten giving about ``target`` ticks over ``[lo, hi]``."""
    span = hi - lo
    if not (span > 0 and math.isfinite(span)):
        return 1.0
    e = math.floor(math.log10(span / target))
    steps = [m * 10.0**k for k in (e - 1, e, e + 1) for m in (1, 2, 5)]
    return min(steps, key=lambda step: (abs(span / step - target), -step))


def _log_ticks(lo: float, hi: float) -> list[float]:
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1, 2, 5) if last - first <= 3 else (1,)
    ticks = [m * 10.0**e for e in range(first, last + 1) for m in mults]
    return [t for t in ticks if lo <= t <= hi]


def tick_label(v: float, step: float, scale: float) -> str:
    """A tick's text, with as many digits as the tick spacing needs, in one style for the whole axis
    (``scale``: its largest magnitude): 0.0005 (not 5e-4) beside 0.0015; 0.5e-4 beside 3.0e-4 on an axis
    below 0.001; 20k on an axis of tens of thousands."""
    if abs(v) < step * 1e-6:
        return "0"
    if 1e4 <= scale < 1e7 and step >= 1000 and abs(step / 1000 - round(step / 1000)) < 1e-9:
        return f"{v / 1000:g}k"
    if scale < 1e-3 or scale >= 1e7:  # one power of ten for the axis: 3.0e-4, 2.5e-4, ..., 0.5e-4
        exponent = math.floor(math.log10(scale))
        digits = max(0, exponent - math.floor(math.log10(step) + 1e-9))
        return f"{v / 10.0**exponent:.{digits}f}e{exponent}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if step * 10**decimals % 1 > 1e-6:  # a step of 2.5 needs one more
        decimals += 1
    return f"{v:.{decimals}f}"


def _short(text: str) -> str:
    """``2e-04`` -> ``2e-4``, ``1e+05`` -> ``1e5``."""
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def _plain(text: str, limit: int) -> str:
    """Text from a file, safe to draw: printable ASCII (the font's set), at most ``limit`` characters."""
    clean = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return clean if len(clean) <= limit else "..." + clean[-(limit - 3) :]


def _fit(text: str, font: Any, width: float) -> str:
    while text and font.getlength(text) > width:
        text = text[:-4] + "..."
    return text
