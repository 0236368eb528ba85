"""The data report's charts: matplotlib (Agg, no pyplot state) rendered to PNG data URIs.

Each function takes one section of ``streams.commands.reports.summary.figures`` and returns a ``data:`` URI,
or ``None`` where the section has nothing to draw (the page then says why). Text from the
data (sources, reasons) is drawn with mathtext off, so a ``$`` in it is just a dollar sign.
"""
from __future__ import annotations

import base64
import io
import math
import time

import matplotlib
from matplotlib.figure import Figure

STYLE = {"text.parse_math": False, "font.size": 9, "axes.titlesize": 9, "axes.spines.top": False,
         "axes.spines.right": False, "figure.dpi": 96}
GREEN, GREY, RED, BLUE = "#2e7d32", "#9e9e9e", "#c62828", "#1565c0"


def _uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _draw(width: float, height: float, paint) -> str:
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
        paint(fig)
        return _uri(fig)


def _label(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def time_axis(ax, edges: list[float]) -> list[float]:
    """Bin centres as an offset from the first bin, in s, min or h; labels the axis and
    spans it over every bin."""
    span = edges[-1] - edges[0]
    unit, div = ("h", 3600.0) if span > 7200 else ("min", 60.0) if span > 120 else ("s", 1.0)
    start = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(edges[0]))
    ax.set(xlabel=f"{unit} since {start} (bins of {(edges[1] - edges[0]) / div:.3g} {unit})",
           xlim=(0, span / div) if span > 0 else (-0.5, 0.5))
    return [((a + b) / 2 - edges[0]) / div if span > 0 else 0.0 for a, b in zip(edges, edges[1:])]


def _nan(xs) -> list[float]:
    return [math.nan if x is None else x for x in xs]


def counts(sec: dict) -> str | None:
    if not sec["series"] or not sec["edges"]:
        return None
    def paint(fig):
        ax = fig.add_subplot()
        x = time_axis(ax, sec["edges"])
        for s in sec["series"]:
            ax.plot(x, s["counts"], marker="o", ms=3, label=_label(f"{s['kind']} · {s['objective']} ({s['total']})"))
        ax.set(ylabel="records per bin", title="records by kind and objective version")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _draw(8, 3, paint)


def _grid(fig: Figure, n: int, cols: int = 4):
    rows = math.ceil(n / cols)
    return [fig.add_subplot(rows, min(cols, n), i + 1) for i in range(n)]


def scores(sec: dict) -> str | None:
    panels = [("ensemble score", sec["ensemble"]["count"], sec["ensemble"]["histogram"])]
    panels += [(f"{name} ({row['kind']})", row["count"], row["histogram"]) for name, row in sec["evaluators"].items()]
    if not sec["evaluators"]:
        return None

    def paint(fig):
        for ax, (title, n, hist) in zip(_grid(fig, len(panels)), panels):
            ax.bar(sec["centres"], hist, width=0.08, color=BLUE)
            ax.set(xlim=(-0.08, 1.08), title=f"{_label(title, 32)}  n={n}")
            if not n:
                ax.text(0.5, 0.5, "nothing scored", transform=ax.transAxes, ha="center", color=GREY)
    return _draw(9, 1.9 * math.ceil(len(panels) / 4), paint)


def margins(sec: dict) -> str | None:
    if not sec["ensemble"]["count"]:
        return None
    ens = sec["ensemble"]
    panels = [("pair margin (ensemble)", ens["count"], ens["centres"], ens["histogram"])]
    panels += [(f"{name}: chosen − rejected", row["count"], sec["centres"], row["histogram"])
               for name, row in sec["evaluators"].items()]

    def paint(fig):
        for ax, (title, n, centres, hist) in zip(_grid(fig, len(panels)), panels):
            colours = [RED if c < -1e-9 else GREEN if c > 1e-9 else GREY for c in centres]
            ax.bar(centres, hist, width=0.08, color=colours)
            ax.set(title=f"{_label(title, 34)}  n={n}", xlim=(min(centres) - 0.08, 1.08))
    return _draw(9, 1.9 * math.ceil(len(panels) / 4), paint)


def length(sec: dict) -> str | None:
    if not sec["points"]:
        return None
    chosen, rejected, margin = zip(*sec["points"])
    r = sec["length_margin_corr"]

    def paint(fig):
        ax = fig.add_subplot()
        dots = ax.scatter(rejected, chosen, c=margin, cmap="viridis", vmin=0, vmax=1, s=14, alpha=0.8)
        top = max(max(chosen), max(rejected)) * 1.05 or 1
        ax.plot([0, top], [0, top], color=GREY, lw=0.8, ls="--", label="equal length")
        ax.set(xlim=(0, top), ylim=(0, top), xlabel="rejected length (characters)", ylabel="chosen length (characters)",
               title=f"{sec['pairs']} pairs; r(length difference, margin) = "
                     f"{'not measurable' if r is None else f'{r:.2f}'}")
        ax.legend(loc="upper left")
        fig.colorbar(dots, ax=ax, label="margin")
    return _draw(5.5, 4.2, paint)


def bias(sec: dict) -> str | None:
    if not sec["edges"] or all(v is None for v in sec["swap_consistency"] + sec["tie_rate"]):
        return None
    def paint(fig):
        ax = fig.add_subplot()
        x = time_axis(ax, sec["edges"])
        for key, colour, name in (("swap_consistency", BLUE, "swap consistency"), ("tie_rate", RED, "tie rate"),
                                  ("parse_failure_rate", GREY, "judge parse failures")):
            if any(v is not None for v in sec[key]):
                ax.plot(x, _nan(sec[key]), marker="o", ms=3, color=colour, label=name)
        ax.set(ylim=(-0.03, 1.03), ylabel="share", title="evaluation bias per time bin")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _draw(8, 2.8, paint)


def agreement(sec: dict) -> str | None:
    names = sec["evaluators"]
    if sec["note"] or not names:
        return None
    import numpy as np

    values = np.ma.masked_invalid(np.array(_rows_nan(sec["agreement"]), dtype=float))

    def paint(fig):
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#e0e0e0")
        im = ax.imshow(values, cmap=cmap, vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), [_label(n, 16) for n in names], rotation=40, ha="right")
        ax.set_yticks(range(len(names)), [_label(n, 16) for n in names])
        for i, row in enumerate(sec["agreement"]):
            for j, v in enumerate(row):
                text = "n/a" if v is None else f"{v:.2f}\nn={sec['n'][i][j]}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if v is not None and (v > 0.8 or v < 0.2) else "black")
        ax.set_title("share of candidate pairs both evaluators order the same way")
        fig.colorbar(im, ax=ax, shrink=0.8)
    side = 1.8 + 0.75 * len(names)
    return _draw(side + 1.2, side, paint)


def _rows_nan(rows) -> list[list[float]]:
    return [_nan(r) for r in rows]


def verifiers(sec: dict) -> str | None:
    rows = sec["rows"]
    if not rows:
        return None

    def paint(fig):
        ax = fig.add_subplot()
        labels = [_label(f"{r['source']} · {r['verifier']}") for r in rows]
        ax.barh(range(len(rows)), [r["pass_rate"] for r in rows], color=GREEN)
        for i, r in enumerate(rows):
            ax.text(min(r["pass_rate"], 0.8) + 0.01, i, f"{r['passed']}/{r['candidates']}", va="center", fontsize=8)
        ax.set_yticks(range(len(rows)), labels)
        ax.invert_yaxis()
        ax.set(xlim=(0, 1), xlabel="candidates passing", title="verifier pass rate per prompt source")
    return _draw(7, 0.9 + 0.35 * len(rows), paint)


def deadletters(sec: dict) -> str | None:
    top = sec["top"]
    if not top:
        return None

    def paint(fig):
        ax = fig.add_subplot()
        ax.barh(range(len(top)), [t["count"] for t in top], color=RED)
        ax.set_yticks(range(len(top)), [_label(f"{t['stage']} {t['error_type']}: {t['reason']}", 60) for t in top])
        ax.invert_yaxis()
        ax.set(xlabel="dead letters", title="top dead-letter reasons")
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _draw(8, 0.9 + 0.35 * len(top), paint)
