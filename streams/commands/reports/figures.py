"""Each section's figures for the data report (``streams.commands.reports.summary.figures`` assembles them).

Histograms use bins 0.1 wide centred on the tenths (a 0/1 verifier shows two crisp bars);
time series use the same ``edges`` for every section. Where there is nothing to measure a
figure is ``None`` and ``note`` says why.
"""
from __future__ import annotations

import statistics
from collections import Counter, defaultdict

from agents.evaluators.bias import BiasTracker, by_version


MAX_POINTS = 3000  # points in the length scatter
PASS = 1.0 - 1e-9  # a verifier passes a candidate when every check passed (value 1.0)


def edges(times, bins: int) -> list[float]:
    """``bins`` equal time bins over the timestamps given (1 where they are all equal)."""
    ts = [t for t in times if t > 0]
    if not ts:
        return []
    lo, hi = min(ts), max(ts)
    n = max(1, bins) if hi > lo else 1
    width = (hi - lo) / n if hi > lo else 1.0
    return [lo + i * width for i in range(n + 1)]


def time_bin(t: float, edges: list[float]) -> int | None:
    if not edges or t <= 0:
        return None
    return min(max(int((t - edges[0]) / (edges[1] - edges[0])), 0), len(edges) - 2)


def _hist(values, lo: float, hi: float) -> list[int]:
    """Counts in 0.1-wide bins centred on lo, lo + 0.1, …, hi (values clamped into range)."""
    n = round((hi - lo) * 10) + 1
    out = [0] * n
    for v in values:
        out[min(max(round((v - lo) * 10), 0), n - 1)] += 1
    return out


def _centres(lo: int, hi: int) -> list[float]:
    return [round(lo + i / 10, 1) for i in range((hi - lo) * 10 + 1)]


def _mean(xs) -> float | None:
    return statistics.fmean(xs) if xs else None


def _version_key(ref: str):
    name, _, v = ref.rpartition("@")
    return (name, int(v)) if v.isdigit() else (ref, -1)


def counts(src, edges: list[float]) -> dict:
    """Records per (kind, objective version) per time bin, and a table per objective version."""
    n = max(len(edges) - 1, 0)
    series: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * n)
    untimed = 0
    for r in src.records:
        row, i = series[(r.kind, r.objective)], time_bin(r.created_at, edges)
        if i is None:
            untimed += 1
        else:
            row[i] += 1
    refs = sorted({j.objective.ref for j in src.judged} | {r.objective for r in src.records}
                  | {o.objective for o in src.outcomes}, key=_version_key)
    return {
        "edges": edges, "untimed": untimed,
        "series": [{"kind": k, "objective": ref, "counts": c, "total": sum(c)}
                   for (k, ref), c in sorted(series.items(), key=lambda kv: (_version_key(kv[0][1]), kv[0][0]))],
        "by_objective": [_objective_row(src, ref) for ref in refs],
        "note": None if src.records else "no records: every prompt ended without one (see outcomes)",
    }


def _objective_row(src, ref: str) -> dict:
    judged = [j for j in src.judged if j.objective.ref == ref]
    records = [r for r in src.records if r.objective == ref]
    pairs = [r for r in records if r.kind == "pair"]
    tracker = BiasTracker()
    for j in judged:
        tracker.add(j)
    bias = tracker.figures(pairs)
    times = [x.created_at for x in [*judged, *records] if x.created_at > 0]
    return {"objective": ref, "first_seen": min(times) if times else None, "judged_sets": len(judged),
            "records": dict(Counter(r.kind for r in records)),
            "outcomes": dict(Counter(o.status for o in src.outcomes if o.objective == ref)),
            "pairs_on_policy": sum(not p.off_policy for p in pairs), "pairs_off_policy": sum(p.off_policy for p in pairs),
            "mean_margin": _mean([p.margin for p in pairs]), "tie_rate": bias["tie_rate"],
            "length_margin_corr": bias["length_margin_corr"]}


def scores(judged) -> dict:
    """Per evaluator: a histogram of its normalised values, how many it could not score, and
    why; the ensemble score as one more row."""
    values, kinds, errors = defaultdict(list), {}, defaultdict(Counter)
    ensemble = []
    tracker = BiasTracker()
    for js in judged:
        tracker.add(js)
        for j in js.judged:
            if j.score is not None:
                ensemble.append(j.score)
            for s in j.scores:
                kinds[s.evaluator] = s.kind
                if s.value is None:
                    errors[s.evaluator][s.error or "unscored"] += 1
                else:
                    values[s.evaluator].append(s.value)
    stats = tracker.figures()["evaluators"]
    rows = {}
    for name in sorted(kinds):
        st = stats.get(name, {"count": 0, "mean": None, "stdev": None})
        rows[name] = {"kind": kinds[name], **st, "unscored": sum(errors[name].values()),
                      "why_unscored": dict(errors[name].most_common(3)), "histogram": _hist(values[name], 0, 1)}
    return {"centres": _centres(0, 1), "evaluators": rows,
            "ensemble": {"count": len(ensemble), "mean": _mean(ensemble),
                         "stdev": statistics.stdev(ensemble) if len(ensemble) > 1 else None,
                         "histogram": _hist(ensemble, 0, 1)},
            "note": None if judged else "no judged sets"}


def margins(pairs) -> dict:
    """The pair margin (ensemble), and per evaluator its own chosen − rejected value: how
    often each evaluator agreed with the pair, was indifferent, or preferred the rejected side."""
    diffs = defaultdict(list)
    for p in pairs:
        theirs = {s.evaluator: s.value for s in p.rejected_side.scores if s.value is not None}
        for s in p.chosen_side.scores:
            if s.value is not None and s.evaluator in theirs:
                diffs[s.evaluator].append(s.value - theirs[s.evaluator])
    rows = {name: {"count": len(d), "mean": _mean(d), "agrees": sum(x > 0 for x in d) / len(d),
                   "indifferent": sum(x == 0 for x in d) / len(d), "disagrees": sum(x < 0 for x in d) / len(d),
                   "histogram": _hist(d, -1, 1)} for name, d in sorted(diffs.items())}
    m = [p.margin for p in pairs]
    return {"centres": _centres(-1, 1), "evaluators": rows,
            "ensemble": {"count": len(m), "mean": _mean(m), "histogram": _hist(m, 0, 1), "centres": _centres(0, 1)},
            "note": None if pairs else "no pair records: no margins"}


def length(judged, pairs) -> dict:
    """Chosen vs rejected length (characters) per pair, with the bias tracker's length figures."""
    tracker = BiasTracker()
    for js in judged:
        tracker.add(js)
    from_pairs, implied = tracker.figures(pairs), tracker.figures()
    points = [[_len(p.chosen), _len(p.rejected), p.margin] for p in pairs]
    step = max(1, len(points) // MAX_POINTS)
    note = None
    if not pairs:
        note = "no pair records: nothing to plot"
    elif from_pairs["length_margin_corr"] is None:
        note = ("correlation not measurable: fewer than 2 pairs, or the length difference or the margin "
                "never varies")
    return {"points": points[::step], "pairs": len(points),
            "length_diff_mean": from_pairs["length_diff_mean"], "length_margin_corr": from_pairs["length_margin_corr"],
            "implied_length_margin_corr": implied["length_margin_corr"],
            "length_flagged": sum(p.length_flagged for p in pairs), "note": note}


def _len(messages) -> int:
    return sum(len(m.content or "") for m in messages)


def bias(judged, pairs, edges: list[float]) -> dict:
    """The bias figures overall, per time bin (swap consistency, tie rate, parse failures) and
    per objective version (``by_version``: first judgments only, the same sums every worker's
    ``prefstream_bias_events_total`` adds up to)."""
    overall, per_bin = BiasTracker(), [BiasTracker() for _ in range(max(len(edges) - 1, 0))]
    for js in judged:
        overall.add(js)
        i = time_bin(js.created_at, edges)
        if i is not None:
            per_bin[i].add(js)
    figs = [t.figures() for t in per_bin]
    out = overall.figures(pairs)
    notes = {}
    if out["swap_consistency"] is None:
        notes["swap_consistency"] = ("no pairwise comparison readable in both orders: the objective has no "
                                     "`pairwise` evaluator, or its verdicts could not be read")
    if out["tie_rate"] is None:
        notes["tie_rate"] = "no judged set with two scored candidates"
    if out["parse_failure_rate"] is None:
        notes["parse_failure_rate"] = "no model judge (`judge`, `pairwise`) gave a verdict"
    if out["same_family_rate"] is None:
        notes["same_family_rate"] = "no model judged, so no judge and writer families to compare"
    versions = {ref: {**t.figures(), "judged_sets": len(t.seen)} for ref, t in sorted(by_version(judged).items())}
    return {"overall": out, "edges": edges, "notes": notes, "by_version": versions,
            "swap_consistency": [f["swap_consistency"] for f in figs], "swap_n": [t.swaps[1] for t in per_bin],
            "tie_rate": [f["tie_rate"] for f in figs], "tie_n": [t.ties[1] for t in per_bin],
            "parse_failure_rate": [f["parse_failure_rate"] for f in figs]}


def agreement(judged) -> dict:
    """For each two evaluators: of the candidate pairs (within a set) that both strictly
    order, the share they order the same way. The diagonal counts each one's strict orders."""
    same, total = Counter(), Counter()
    names: set[str] = set()
    for js in judged:
        by_eval = defaultdict(dict)
        for j in js.judged:
            for s in j.scores:
                if s.value is not None:
                    by_eval[s.evaluator][j.candidate.id] = s.value
        names |= by_eval.keys()
        ids = [j.candidate.id for j in js.judged]
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                signs = {e: (v[ids[a]] > v[ids[b]]) - (v[ids[a]] < v[ids[b]])
                         for e, v in by_eval.items() if ids[a] in v and ids[b] in v}
                signs = {e: s for e, s in signs.items() if s}
                for e in signs:
                    for f in signs:
                        total[(e, f)] += 1
                        same[(e, f)] += signs[e] == signs[f]
    order = sorted(e for e in names if total[(e, e)])
    return {"evaluators": order, "never_ordered": sorted(e for e in names if not total[(e, e)]),
            "agreement": [[same[(e, f)] / total[(e, f)] if total[(e, f)] else None for f in order] for e in order],
            "n": [[total[(e, f)] for f in order] for e in order],
            "note": None if order else "no evaluator ever told two candidates apart"}


def verifiers(judged) -> dict:
    """Per prompt source and verifier: candidates scored, passed (value 1.0), the rate, and
    the prompts with at least one passing candidate."""
    rows: dict[tuple[str, str], dict] = {}
    for js in judged:
        solved = defaultdict(bool)
        for j in js.judged:
            for s in j.scores:
                if s.kind != "verifier" or s.value is None:
                    continue
                row = rows.setdefault((js.prompt.source, s.evaluator),
                                      {"source": js.prompt.source, "verifier": s.evaluator, "candidates": 0,
                                       "passed": 0, "sum": 0.0, "prompts": set(), "solved": set()})
                row["candidates"] += 1
                row["passed"] += s.value >= PASS
                row["sum"] += s.value
                row["prompts"].add(js.prompt.id)
                solved[s.evaluator] |= s.value >= PASS
        for name, ok in solved.items():
            if ok:
                rows[(js.prompt.source, name)]["solved"].add(js.prompt.id)
    out = [{"source": r["source"], "verifier": r["verifier"], "candidates": r["candidates"],
            "passed": r["passed"], "pass_rate": r["passed"] / r["candidates"], "mean_value": r["sum"] / r["candidates"],
            "prompts": len(r["prompts"]), "prompts_solved": len(r["solved"])} for _, r in sorted(rows.items())]
    return {"rows": out, "note": None if out else "no verifier applied to any candidate (no prompt had a "
                                                  "reference answer, instruction list, tests, schema or pattern)"}


def deadletters(letters, top: int = 10) -> dict:
    """The most frequent reasons (stage, error type, first line of the error)."""
    groups: dict[tuple[str, str, str], list] = defaultdict(list)
    for d in letters:
        reason = (d.error.strip().splitlines() or [""])[0][:200]
        groups[(d.stage, d.error_type, reason)].append(d)
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return {"total": len(letters), "reasons": len(groups),
            "top": [{"stage": s, "error_type": t, "reason": r, "count": len(ds),
                     "example_prompt_id": next((d.prompt_id for d in ds if d.prompt_id), None),
                     "last_at": max(d.created_at for d in ds) or None} for (s, t, r), ds in ranked[:top]],
            "note": None if letters else "no dead letters"}
