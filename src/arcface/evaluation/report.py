"""A self-contained HTML report: the table of numbers and inline SVG plots, drawn here (no matplotlib).

The file opens offline in any browser and in the KFP UI (an HTML artifact): no script, no external style,
no image files.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from arcface import atomic
from arcface.evaluation.metrics import subsample_roc

__all__ = ["bar_chart", "histogram_chart", "line_chart", "render_report", "write_report"]

WIDTH, HEIGHT = 560, 340
MARGIN = {"left": 60, "right": 20, "top": 30, "bottom": 50}
BLUE, ORANGE, GREY = "#1f77b4", "#ff7f0e", "#999999"
MAX_BARS = 60


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return html.escape(str(value))


class _Axes:
    """Maps data coordinates to SVG pixels inside the plot margins (y grows upwards)."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], x_log: bool = False):
        self.x_log = x_log
        self.x0, self.x1 = (math.log10(v) for v in x_range) if x_log else x_range
        self.y0, self.y1 = y_range
        self.left, self.top = MARGIN["left"], MARGIN["top"]
        self.w = WIDTH - MARGIN["left"] - MARGIN["right"]
        self.h = HEIGHT - MARGIN["top"] - MARGIN["bottom"]

    def x(self, v: float) -> float:
        v = math.log10(v) if self.x_log else v
        return self.left + (v - self.x0) / ((self.x1 - self.x0) or 1.0) * self.w

    def y(self, v: float) -> float:
        return self.top + self.h - (v - self.y0) / ((self.y1 - self.y0) or 1.0) * self.h

    def frame(self, title: str, x_label: str, y_label: str, x_ticks: Sequence[tuple[float, str]],
              y_ticks: Sequence[tuple[float, str]]) -> list[str]:
        parts = [f'<rect x="{self.left}" y="{self.top}" width="{self.w}" height="{self.h}" fill="none" '
                 f'stroke="#333"/>',
                 f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
                 f'<text x="{self.left + self.w / 2}" y="{HEIGHT - 10}" text-anchor="middle">'
                 f'{html.escape(x_label)}</text>',
                 f'<text x="14" y="{self.top + self.h / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {self.top + self.h / 2})">{html.escape(y_label)}</text>']
        for value, label in x_ticks:
            px = self.x(value)
            parts.append(f'<line x1="{px:.1f}" y1="{self.top}" x2="{px:.1f}" y2="{self.top + self.h}" '
                         f'stroke="#eee"/><text x="{px:.1f}" y="{self.top + self.h + 16}" text-anchor="middle">'
                         f'{html.escape(label)}</text>')
        for value, label in y_ticks:
            py = self.y(value)
            parts.append(f'<line x1="{self.left}" y1="{py:.1f}" x2="{self.left + self.w}" y2="{py:.1f}" '
                         f'stroke="#eee"/><text x="{self.left - 6}" y="{py + 4:.1f}" text-anchor="end">'
                         f'{html.escape(label)}</text>')
        return parts


def _svg(parts: list[str], height: int = HEIGHT) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">' + "".join(parts) + "</svg>")


def _legend(entries: Sequence[tuple[str, str]]) -> list[str]:
    parts = []
    for i, (label, color) in enumerate(entries):
        y = MARGIN["top"] + 14 + 16 * i
        x = MARGIN["left"] + 10
        parts.append(f'<rect x="{x}" y="{y - 9}" width="12" height="10" fill="{color}"/>'
                     f'<text x="{x + 18}" y="{y}">{html.escape(label)}</text>')
    return parts


def _linear_ticks(lo: float, hi: float, n: int = 5) -> list[tuple[float, str]]:
    return [(v, f"{v:.2g}") for v in np.linspace(lo, hi, n)]


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float], str]], title: str, x_label: str,
               y_label: str, x_log: bool = False, x_range: tuple[float, float] | None = None,
               y_range: tuple[float, float] = (0.0, 1.0)) -> str:
    """Polylines (label, xs, ys, colour); with ``x_log`` the x axis is log10 and x <= 0 is clipped to its left."""
    xs_all = np.concatenate([np.asarray(s[1], dtype=float) for s in series])
    if x_range is None:
        positive = xs_all[xs_all > 0]
        x_range = ((10 ** math.floor(math.log10(positive.min())) if positive.size else 1e-4, 1.0) if x_log
                   else (float(xs_all.min()), float(xs_all.max())))
    axes = _Axes(x_range, y_range, x_log)
    if x_log:
        decades = range(round(math.log10(x_range[0])), round(math.log10(x_range[1])) + 1)
        x_ticks = [(10.0**d, f"1e{d}" if d else "1") for d in decades]
    else:
        x_ticks = _linear_ticks(*x_range)
    parts = axes.frame(title, x_label, y_label, x_ticks, _linear_ticks(*y_range))
    for _, xs, ys, color in series:
        xs = np.clip(np.asarray(xs, dtype=float), x_range[0], x_range[1])
        points = " ".join(f"{axes.x(x):.1f},{axes.y(y):.1f}" for x, y in zip(xs, ys, strict=True))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
    parts += _legend([(s[0], s[3]) for s in series])
    return _svg(parts)


def histogram_chart(groups: Sequence[tuple[str, Sequence[float], str]], title: str, x_label: str,
                    bins: int = 50) -> str:
    """Overlaid density histograms (label, values, colour) on shared bins, as step outlines."""
    values = np.concatenate([np.asarray(g[1], dtype=float) for g in groups])
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    densities = [np.histogram(np.asarray(g[1], dtype=float), bins=edges, density=True)[0] if len(g[1])
                 else np.zeros(bins) for g in groups]
    top = max(float(max(d.max() for d in densities)), 1e-12) * 1.05
    axes = _Axes((lo, hi), (0.0, top))
    parts = axes.frame(title, x_label, "density", _linear_ticks(lo, hi), _linear_ticks(0.0, top))
    for (_, _, color), density in zip(groups, densities, strict=True):
        points = [f"{axes.x(lo):.1f},{axes.y(0):.1f}"]
        for k, d in enumerate(density):
            points += [f"{axes.x(edges[k]):.1f},{axes.y(d):.1f}", f"{axes.x(edges[k + 1]):.1f},{axes.y(d):.1f}"]
        points.append(f"{axes.x(hi):.1f},{axes.y(0):.1f}")
        parts.append(f'<polygon points="{" ".join(points)}" fill="{color}" fill-opacity="0.35" stroke="{color}"/>')
    parts += _legend([(f"{g[0]} ({len(g[1])})", g[2]) for g in groups])
    return _svg(parts)


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, x_label: str) -> str:
    """Horizontal bars in [0, 1], one row per label (for per-identity accuracy)."""
    row, left = 14, 160
    height = MARGIN["top"] + row * len(labels) + 40
    width = WIDTH - left - MARGIN["right"]
    parts = [f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        px = left + tick * width
        parts.append(f'<line x1="{px:.1f}" y1="{MARGIN["top"]}" x2="{px:.1f}" y2="{height - 30}" stroke="#eee"/>'
                     f'<text x="{px:.1f}" y="{height - 16}" text-anchor="middle">{tick:g}</text>')
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = MARGIN["top"] + i * row
        parts.append(f'<text x="{left - 6}" y="{y + 10}" text-anchor="end">{html.escape(label[:28])}</text>'
                     f'<rect x="{left}" y="{y + 2}" width="{max(value, 0.0) * width:.1f}" height="{row - 4}" '
                     f'fill="{BLUE}"><title>{html.escape(label)}: {value:.3f}</title></rect>')
    parts.append(f'<text x="{left + width / 2}" y="{height - 2}" text-anchor="middle">{html.escape(x_label)}</text>')
    return _svg(parts, height)


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _number_rows(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    v, c, t, m = metrics["verification"], metrics["closed_set"], metrics["throughput"], metrics["model"]
    accuracy = (f"{v['accuracy_mean']:.4f} ± {v['accuracy_std']:.4f} ({v['folds']} folds)"
                if v["accuracy_mean"] is not None else v.get("accuracy_reason"))
    rows: list[tuple[str, Any]] = [
        ("pairs", f"{v['pairs']} ({v['genuine_pairs']} genuine, {v['impostor_pairs']} impostor; {v['source']})"),
        ("verification accuracy", accuracy),
        ("accuracy of always answering the majority kind", v["majority_baseline_accuracy"]),
        ("AUC", v["auc"]), ("EER", v["eer"]),
        ("EER threshold", v["eer_threshold"]),
        ("threshold (best accuracy on all pairs)", f"{v['threshold']:.4f} (accuracy {v['threshold_accuracy']:.4f})"),
    ]
    for key, value in v["tar_at_far"].items():
        shown = (f"{value['tar']:.4f} (threshold {_fmt(value['threshold'])})" if value["tar"] is not None
                 else value["reason"])
        rows.append((f"TAR @ FAR={key}", shown))
    rows += [("genuine similarity", f"{v['genuine_score_mean']:.4f} ± {v['genuine_score_std']:.4f}"),
             ("impostor similarity", f"{v['impostor_score_mean']:.4f} ± {v['impostor_score_std']:.4f}")]
    if "skipped" in c:
        rows.append(("closed-set accuracy", f"skipped: {c['skipped']}"))
    else:
        rows += [("closed-set top-1", c["top1"]), (f"closed-set top-{c['k']}", c["top5"]),
                 ("validation images / classes", f"{c['images']} / {c['classes']}")]
    rows += [("embedding throughput", f"{_fmt(t['images_per_second'], 1)} images/s ({t['images']} images, "
                                      f"flip TTA {'on' if t['flip_tta'] else 'off'})"),
             ("model", f"{m['backbone']}, {m['margin']}, {m['image_size']}x{m['image_size']}, "
                       f"center crop {m['center_crop']}, embedding {m['embedding_size']}")]
    return rows


def render_report(metrics: dict[str, Any], *, scores, is_same, far, tar) -> str:
    """The report as one HTML string."""
    scores, is_same = np.asarray(scores, dtype=float), np.asarray(is_same, dtype=bool)
    v = metrics["verification"]
    # A few hundred points draw the curve as well as 100k and keep the file small.
    curve = subsample_roc(far, tar, np.zeros(len(far)), max_points=400)
    n_impostor = max(int((~is_same).sum()), 1)
    lowest = 10 ** math.floor(math.log10(1 / n_impostor))  # the smallest FAR these pairs can resolve
    sections = [
        "<h2>Numbers</h2>", _table(_number_rows(metrics)),
        "<h2>Verification</h2>",
        line_chart([("ROC", curve["fpr"], curve["tpr"], BLUE)], f"ROC (AUC {v['auc']:.4f})", "false accept rate (log)",
                   "true accept rate", x_log=True, x_range=(lowest, 1.0)),
        histogram_chart([("genuine", scores[is_same], BLUE), ("impostor", scores[~is_same], ORANGE)],
                        "Cosine similarity of pairs", "cosine similarity"),
    ]
    closed = metrics["closed_set"]
    if closed.get("per_identity"):
        worst = sorted(closed["per_identity"], key=lambda r: (r["top1"], r["identity"]))
        shown = worst[:MAX_BARS]
        note = (f"<p>The {len(shown)} identities with the lowest accuracy of {len(worst)}.</p>"
                if len(worst) > len(shown) else "")
        sections += ["<h2>Closed-set accuracy per identity</h2>", note,
                     bar_chart([f"{r['identity']} ({r['images']})" for r in shown], [r["top1"] for r in shown],
                               "Top-1 accuracy per identity (validation images)", "top-1 accuracy")]
    style = ("body{font-family:sans-serif;margin:24px;max-width:980px}table{border-collapse:collapse}"
             "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f5f5f5}"
             "svg{display:block;margin:12px 0}")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>ArcFace evaluation</title>"
            f"<style>{style}</style></head><body><h1>ArcFace evaluation</h1>" + "\n".join(sections)
            + "</body></html>\n")


def write_report(path: str | os.PathLike, metrics: dict[str, Any], *, scores, is_same, far, tar) -> None:
    """Write :func:`render_report` through a temporary file and a rename."""
    text = render_report(metrics, scores=scores, is_same=is_same, far=far, tar=tar)
    atomic.write_text(path, text)
