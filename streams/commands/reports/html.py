"""The data report as one self-contained HTML page (``prefstream report --out report.html``).

Charts are PNG data URIs (``streams.commands.reports.charts``); styles are inline; there is no
script and no external URL, and a Content-Security-Policy forbids both, so the page opens
with no network and hostile text in a prompt or response stays text. Every value from the
data goes through ``html.escape``.
"""
from __future__ import annotations

import html
import time

from streams.commands.reports import charts as charts

SECTIONS = [("counts", "Records by kind and objective version over time"),
            ("scores", "Score histograms per evaluator"),
            ("margins", "Margin histograms per evaluator"),
            ("length", "Chosen vs rejected length"),
            ("bias", "Swap consistency and tie rate over time"),
            ("agreement", "Evaluator agreement"),
            ("verifiers", "Verifier pass rates per source"),
            ("deadletters", "Top dead-letter reasons"),
            ("samples", "A sample of pairs")]
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1180px;padding:0 20px 40px;
color:#1d1d1d}h1{margin:18px 0 4px}h2{border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:30px}
nav a{margin-right:12px}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:right;vertical-align:top}th{background:#f3f3f3}td.t,th.t{text-align:left}.na{color:#888}
.empty{color:#7a4b00;background:#fff6e0;padding:6px 10px;border-left:3px solid #e0a000}img{max-width:100%}
.meta{color:#555}.pair{border:1px solid #ccc;border-radius:6px;padding:8px 12px;margin:14px 0}
.sides{display:grid;grid-template-columns:1fr 1fr;gap:12px}.side{border-top:3px solid #2e7d32;padding-top:4px}
.side.rejected{border-color:#c62828}pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;
padding:6px 8px;margin:4px 0;max-height:22em;overflow:auto;font-size:12.5px}.scores td{font-size:12px}
"""


def e(value) -> str:
    return html.escape(str(value), quote=True)


def num(value, digits: int = 3) -> str:
    if value is None:
        return '<span class="na" title="nothing to measure">n/a</span>'
    if isinstance(value, float):
        return e(f"{value:.{digits}g}")
    return e(value)


def when(t) -> str:
    return "n/a" if not t else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def table(head: list[str], rows: list[list[str]], text: tuple[int, ...] = (0,), cls: str = "") -> str:
    """``rows`` hold HTML already escaped (via ``e``/``num``); ``text``: left-aligned columns."""
    def cell(tag, i, v):
        return f'<{tag}{" class=t" if i in text else ""}>{v}</{tag}>'
    out = [f'<table class="{cls}"><tr>' + "".join(cell("th", i, e(h)) for i, h in enumerate(head)) + "</tr>"]
    out += ["<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows]
    return "".join(out) + "</table>"


def figure(uri: str | None, alt: str, empty: str | None) -> str:
    if uri is None:
        return f'<p class="empty">Nothing to measure: {e(empty or "no data")}.</p>'
    return f'<img src="{uri}" alt="{e(alt)}">'


def render(figs: dict) -> str:
    t = figs["totals"]
    body = [f"<h1>prefstream data report</h1><p class=meta>{e(figs['source'])}"
            + (f" · objective {e(figs['objective'])}" if figs["objective"] else "")
            + f" · generated {e(when(figs['generated_at']))}</p>",
            "<p>" + " · ".join(f"{e(k.replace('_', ' '))}: <b>{num(v)}</b>" for k, v in t.items()) + "</p>",
            "<nav>" + "".join(f'<a href="#{key}">{e(title)}</a>' for key, title in SECTIONS) + "</nav>"]
    parts = {"counts": _counts, "scores": _scores, "margins": _margins, "length": _length, "bias": _bias,
             "agreement": _agreement, "verifiers": _verifiers, "deadletters": _deadletters, "samples": _samples}
    for key, title in SECTIONS:
        body.append(f'<section id="{key}"><h2>{e(title)}</h2>{parts[key](figs[key])}</section>')
    return ("<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>prefstream report: {e(figs['source'])}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def _counts(sec: dict) -> str:
    rows = [[e(r["objective"]), e(when(r["first_seen"])), num(r["judged_sets"]),
             e(", ".join(f"{k} {v}" for k, v in sorted(r["records"].items())) or "none"),
             e(", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items())) or "none"),
             num(r["pairs_on_policy"]), num(r["pairs_off_policy"]), num(r["mean_margin"]), num(r["tie_rate"]), num(r["length_margin_corr"])] for r in sec["by_objective"]]
    untimed = f"<p>{sec['untimed']} records carry no time and are left out of the chart.</p>" if sec["untimed"] else ""
    return (figure(charts.counts(sec), "records per time bin by kind and objective version", sec["note"]) + untimed
            + table(["objective", "first seen", "judged sets", "records", "outcomes by status",
                     "pairs on-policy", "pairs off-policy (reference, production)", "mean margin",
                     "tie rate", "r(length, margin)"], rows, text=(0, 1)))


def _scores(sec: dict) -> str:
    rows = [[e(name), e(r["kind"]), num(r["count"]), num(r["mean"]), num(r["stdev"]), num(r["unscored"]),
             e("; ".join(f"{k} ({v})" for k, v in r["why_unscored"].items()))]
            for name, r in sec["evaluators"].items()]
    ens = sec["ensemble"]
    rows.append([e("ensemble score"), e("ensemble"), num(ens["count"]), num(ens["mean"]), num(ens["stdev"]), "", ""])
    return (figure(charts.scores(sec), "histogram of normalised values per evaluator", sec["note"])
            + table(["evaluator", "kind", "scored", "mean", "stdev", "unscored", "why unscored"], rows, text=(0, 1, 6)))


def _margins(sec: dict) -> str:
    rows = [[e(name), num(r["count"]), num(r["mean"]), num(r["agrees"]), num(r["indifferent"]), num(r["disagrees"])]
            for name, r in sec["evaluators"].items()]
    return ("<p>Per evaluator, its own value for the chosen side minus the rejected side, over the pairs: "
            "how often it agreed with the pair (green), could not tell them apart (grey) or preferred the "
            "rejected side (red).</p>"
            + figure(charts.margins(sec), "margin histograms", sec["note"])
            + table(["evaluator", "pairs", "mean difference", "agrees", "indifferent", "disagrees"], rows))


def _length(sec: dict) -> str:
    rows = [[e("pairs"), num(sec["pairs"])], [e("mean length difference (chosen − rejected)"),
                                              num(sec["length_diff_mean"])],
            [e("r(length difference, margin), pairs"), num(sec["length_margin_corr"])],
            [e("r(length difference, score gap), best vs worst of each judged set"),
             num(sec["implied_length_margin_corr"])],
            [e("pairs flagged by the length guard"), num(sec["length_flagged"])]]
    note = f'<p class="empty">{e(sec["note"])}.</p>' if sec["note"] and sec["points"] else ""
    return (figure(charts.length(sec), "chosen vs rejected length scatter", sec["note"]) + note
            + table(["figure", "value"], rows))


def _bias(sec: dict) -> str:
    o = sec["overall"]
    rows = [[e(k.replace("_", " ")), num(o[k]), e(sec["notes"].get(k, ""))]
            for k in ("swap_consistency", "tie_rate", "parse_failure_rate", "same_family_rate")]
    notes = "".join(f'<p class="empty">Nothing to measure for {e(k.replace("_", " "))}: {e(v)}.</p>'
                    for k, v in sec["notes"].items() if k in ("swap_consistency", "tie_rate"))
    figures = ("swap_consistency", "tie_rate", "parse_failure_rate", "same_family_rate", "length_diff_mean")
    versions = [[e(ref), num(v["judged_sets"]), *(num(v[k]) for k in figures)]
                for ref, v in sec.get("by_version", {}).items()]
    return (figure(charts.bias(sec), "swap consistency and tie rate per time bin",
                   "no judged sets with a time, or no figure measurable in any bin") + notes
            + table(["figure (overall)", "value", "why n/a"], rows, text=(0, 2))
            + table(["objective version", "judged sets", *(k.replace("_", " ") for k in figures)], versions,
                    text=(0,)))


def _agreement(sec: dict) -> str:
    return ("<p>For two evaluators: of the candidate pairs within a set that both order strictly, the share "
            "they order the same way (n = such pairs; the diagonal counts each evaluator's strict orders).</p>"
            + figure(charts.agreement(sec), "evaluator agreement matrix", sec["note"])
            + (f"<p>Never told two candidates of a set apart, so left out: {e(', '.join(sec['never_ordered']))}.</p>"
               if sec["never_ordered"] else ""))


def _verifiers(sec: dict) -> str:
    rows = [[e(r["source"]), e(r["verifier"]), num(r["candidates"]), num(r["passed"]), num(r["pass_rate"]),
             num(r["mean_value"]), num(r["prompts"]), num(r["prompts_solved"])] for r in sec["rows"]]
    return (figure(charts.verifiers(sec), "verifier pass rate per source", sec["note"])
            + (table(["source", "verifier", "candidates", "passed", "pass rate", "mean value", "prompts",
                      "prompts with a pass"], rows, text=(0, 1)) if rows else ""))


def _deadletters(sec: dict) -> str:
    rows = [[e(t["stage"]), e(t["error_type"]), e(t["reason"]), num(t["count"]), e(t["example_prompt_id"] or ""),
             e(when(t["last_at"]))] for t in sec["top"]]
    head = f"<p>{sec['total']} dead letters, {sec['reasons']} distinct reasons.</p>" if sec["total"] else ""
    return (head + figure(charts.deadletters(sec), "top dead-letter reasons", sec["note"])
            + (table(["stage", "error type", "reason", "count", "example prompt", "last"], rows, text=(0, 1, 2, 4))
               if rows else ""))


def _samples(sec: dict) -> str:
    if not sec["pairs"]:
        return f'<p class="empty">Nothing to show: {e(sec["note"])}.</p>'
    out = [f"<p>{len(sec['pairs'])} of {sec['of']} pairs, drawn at random (seed 0).</p>"]
    for p in sec["pairs"]:
        prompt = "\n\n".join(f"[{m['role']}] {m['content']}" for m in p["prompt"])
        out.append(f'<article class="pair"><h3>{e(p["id"])} · {e(p["objective"])} · margin {num(p["margin"])}'
                   f' · source {e(p["source"])} · {e(p["pairing"])}'
                   f'{" · length-flagged" if p["length_flagged"] else ""}</h3>'
                   f"<b>prompt</b> <span class=meta>{e(p['prompt_id'])}</span><pre>{e(prompt)}</pre>"
                   f'<div class="sides">{_side(p, "chosen")}{_side(p, "rejected")}</div></article>')
    return "".join(out)


def _side(p: dict, side: str) -> str:
    rows = [[e(s["evaluator"]), e(s["kind"]), num(s["value"]), e("" if s["raw"] is None else s["raw"]),
             e(s["rationale"] or s["error"] or "")] for s in p[f"scores_{side}"]]
    return (f'<div class="side {side}"><b>{side}</b> · {e(p[f"model_{side}"])} · score {num(p[f"score_{side}"])}'
            f"<pre>{e(p[side])}</pre>"
            + table(["evaluator", "kind", "value", "raw", "rationale"], rows, text=(0, 1, 3, 4), cls="scores")
            + "</div>")
