"""How far two objectives agree, on the prompts both saw (``prefstream objective compare``).

Input: the outcomes and preference records (live and shadow) as read from the bus. Each
side is ``NAME`` (its newest version per prompt) or ``NAME@VERSION``. Reported:

* coverage: prompts each side ended, and those both did;
* pair agreement: of those, how often both or neither made a pair;
* choice agreement, where both made a pair: the same chosen response, or a reversal (one
  side's chosen is the other's rejected); other pairs count as different_chosen;
* chosen-model agreement (which generator wins) and the mean margins.
"""
from __future__ import annotations

from statistics import mean
from typing import Any, Iterable

from schemas import Outcome, PreferenceRecord


def parse_side(side: str) -> tuple[str, int | None]:
    name, _, version = side.partition("@")
    if not name or (version and not version.isdigit()):
        raise ValueError(f"{side!r} is not NAME or NAME@VERSION")
    return name, int(version) if version else None


def _version(o: Outcome) -> int:
    return int(o.objective.rsplit("@", 1)[1])


def pick(outcomes: Iterable[Outcome], side: str) -> dict[str, Outcome]:
    """prompt id → the side's outcome (the newest matching version)."""
    name, version = parse_side(side)
    out: dict[str, Outcome] = {}
    for o in outcomes:
        if o.objective.rsplit("@", 1)[0] != name or (version is not None and _version(o) != version):
            continue
        if o.prompt_id not in out or _version(o) >= _version(out[o.prompt_id]):
            out[o.prompt_id] = o
    return out


def _text(messages) -> tuple[str, ...]:
    return tuple(m.content or "" for m in messages)


def _ratio(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def compare(values: Iterable[Any], a: str, b: str) -> dict:
    values = list(values)
    records = {v.id: v for v in values if isinstance(v, PreferenceRecord)}
    outcomes = [v for v in values if isinstance(v, Outcome)]
    sa, sb = pick(outcomes, a), pick(outcomes, b)
    both = sorted(sa.keys() & sb.keys())
    n = dict(both_pair=0, a_only_pair=0, b_only_pair=0, neither_pair=0, same_chosen=0, reversed=0,
             different_chosen=0, same_model=0)
    margins: tuple[list[float], list[float]] = ([], [])
    for pid in both:
        pa, pb = sa[pid].status == "records", sb[pid].status == "records"
        n["both_pair" if pa and pb else "a_only_pair" if pa else "b_only_pair" if pb else "neither_pair"] += 1
        ra, rb = _record(sa[pid], records), _record(sb[pid], records)
        if ra is None or rb is None:
            continue
        margins[0].append(ra.margin)
        margins[1].append(rb.margin)
        n["same_model"] += ra.chosen_side.model == rb.chosen_side.model
        ca, xa, cb, xb = _text(ra.chosen), _text(ra.rejected), _text(rb.chosen), _text(rb.rejected)
        n["reversed" if ca == xb or cb == xa else "same_chosen" if ca == cb else "different_chosen"] += 1
    compared = len(margins[0])
    return {
        "a": a, "b": b, "prompts_a": len(sa), "prompts_b": len(sb), "both": len(both), **n,
        "pair_agreement": _ratio(n["both_pair"] + n["neither_pair"], len(both)),
        "choice_agreement": _ratio(n["same_chosen"], n["same_chosen"] + n["reversed"]),
        "chosen_model_agreement": _ratio(n["same_model"], compared),
        "mean_margin_a": round(mean(margins[0]), 4) if compared else None,
        "mean_margin_b": round(mean(margins[1]), 4) if compared else None,
    }


def _record(o: Outcome, records: dict[str, PreferenceRecord]) -> PreferenceRecord | None:
    found = [records[r] for r in o.record_ids if r in records]
    return found[0] if found else None


def render(r: dict) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    return "\n".join([
        f"{r['a']} vs {r['b']}: prompts {r['prompts_a']} / {r['prompts_b']}, both saw {r['both']}",
        f"pair agreement {pct(r['pair_agreement'])}: both paired {r['both_pair']}, neither {r['neither_pair']}, "
        f"only {r['a']} {r['a_only_pair']}, only {r['b']} {r['b_only_pair']}",
        f"choice agreement {pct(r['choice_agreement'])}: same chosen {r['same_chosen']}, reversed {r['reversed']}, "
        f"different chosen {r['different_chosen']}",
        f"chosen-model agreement {pct(r['chosen_model_agreement'])}; mean margin {r['mean_margin_a']} / "
        f"{r['mean_margin_b']}",
    ])
