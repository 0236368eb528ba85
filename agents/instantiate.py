"""instantiate: turn a judged candidate set into training records, and say how the prompt
ended.

judgments ──▶ [instantiate] ──▶ preferences + outcomes

The objective's ``instantiation`` decides which records one judged set becomes, several
kinds at once: pairs (best-vs-worst, best-vs-each, all pairs above the margin), unpaired
KTO labels by thresholds, a listwise ranking, scalar rewards. Ties and identical texts
never pair. Record ids hash the prompt id, objective@version, the kind and the candidates
involved, so the same judged set always yields the same ids.

Agent trajectories branched at steps (candidates with ``intent="step:k"``): candidates are
paired only with others of the same step, so a step-level pair has one prefix
(``messages[:k]``) and two next actions, each an assistant turn in TRL's conversational shape
(a tool call with ``tool_calls``, or a final answer); each record carries ``step``. Every
record carries the prompt's ``difficulty`` (from the verifiers' pass rate). The binding also
publishes the set's ``PromptStats`` to ``prompt-stats`` (``agents.utility``) for curate.
"""
from __future__ import annotations

import logging
import time
from collections import Counter

import msgspec

from agents.synthesis.trajectory import parse_action, step_of
from agents.utility import difficulty, pass_rate, prompt_stats
from schemas import (InstantiationSpec, Judged, JudgedSet, Message, Outcome, PreferenceRecord, Ranked,
                     RankingRecord, RewardRecord, Side, UnpairedRecord, Withdrawn, stable_id)
from schemas.policies import parse_ref
from streams.runtime import Emit, Handler
from streams.topics import OUTCOMES, PREFERENCES, PREFERENCES_SHADOW, PROMPT_STATS

logger = logging.getLogger(__name__)

EPS = 1e-9  # score differences below this are ties (float noise)


def rank(judged: list[Judged]) -> list[Judged]:
    """Scored candidates, best first; equal scores keep a stable, id-based order."""
    scored = [j for j in judged if j.score is not None]
    return sorted(scored, key=lambda j: (-j.score, j.candidate.id))


def length_of(j: Judged) -> int:
    """The evaluator's length figure for a candidate (a ``length`` score's raw value),
    else its length in characters."""
    for s in j.scores:
        if s.evaluator == "length" and isinstance(s.raw, (int, float)) and not isinstance(s.raw, bool):
            return int(s.raw)
    return len(j.candidate.text)


def _text(j: Judged) -> str:
    return j.candidate.text.strip()


def _unique(ranked: list[Judged]) -> list[Judged]:
    """The best-ranked candidate of each distinct text."""
    seen: set[str] = set()
    return [j for j in ranked if not (_text(j) in seen or seen.add(_text(j)))]


def candidate_pairs(ranked: list[Judged], mode: str) -> list[tuple[Judged, Judged]]:
    if mode == "best_vs_worst":
        return [(ranked[0], ranked[-1])]
    if mode == "best_vs_each":
        return [(ranked[0], j) for j in ranked[1:]]
    return [(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1:]]


def _verdict(chosen: Judged, rejected: Judged, spec: InstantiationSpec) -> str:
    """``ok``, ``length_flagged``, or why this pair is skipped: ``tie``, ``below``,
    ``identical``, ``length_dropped``."""
    margin = chosen.score - rejected.score
    if margin <= EPS:
        return "tie"
    if margin + EPS < spec.min_margin:
        return "below"
    if _text(chosen) == _text(rejected):
        return "identical"
    if spec.length_guard != "off" and length_of(chosen) > spec.length_ratio * max(length_of(rejected), 1):
        return "length_dropped" if spec.length_guard == "drop" else "length_flagged"
    return "ok"


def select_pairs(jset: JudgedSet, ranked: list[Judged]) -> tuple[list[tuple[Judged, Judged, bool]], Counter, str]:
    """``([(chosen, rejected, length_flagged)], counts, reason)``; the reason says why there
    is no pair ("" where there is one, or pairs are off)."""
    spec = jset.objective.instantiation
    if spec.pairs == "none":
        return [], Counter(), ""
    if len(ranked) < 2:
        return [], Counter(), f"only {len(ranked)} of {len(jset.judged)} candidates were scored"
    kept, skipped = [], Counter()
    for chosen, rejected in candidate_pairs(ranked, spec.pairs):
        verdict = _verdict(chosen, rejected, spec)
        if verdict in ("ok", "length_flagged"):
            kept.append((chosen, rejected, verdict == "length_flagged"))
        skipped[verdict] += 1
    counts = Counter({k: v for k, v in skipped.items() if k.startswith("length_")})
    return kept, counts, "" if kept else _no_pair_reason(ranked, spec, skipped)


def _no_pair_reason(ranked: list[Judged], spec: InstantiationSpec, skipped: Counter) -> str:
    if spec.pairs == "best_vs_worst":
        margin = ranked[0].score - ranked[-1].score
        return {
            "tie": "all scored candidates tie",
            "below": f"best-worst margin {margin:.3f} is below the objective's {spec.min_margin}",
            "identical": "chosen and rejected texts are identical",
            "length_dropped": f"the chosen side is over {spec.length_ratio}x longer (length guard: drop)",
        }[next(iter(skipped))]
    words = {"tie": "tie", "below": f"below the margin {spec.min_margin}", "identical": "with identical texts",
             "length_dropped": "dropped by the length guard"}
    parts = ", ".join(f"{n} {words[k]}" for k, n in sorted(skipped.items()))
    return f"no {spec.pairs} pair qualifies: {parts}"


def _side(j: Judged) -> Side:
    return Side(candidate_id=j.candidate.id, model=j.candidate.model, score=j.score, scores=j.scores,
                off_policy=j.candidate.off_policy, policy=j.candidate.policy)


def record_policy(judged: list[Judged]) -> str | None:
    """The policy a record is from: the first side's that has one, or an older version of that
    policy where another side has one (a record is as stale as its stalest side); None where no
    side was written by a policy (a pair of a policy and a fixed model or reference: the policy's)."""
    refs = [parse_ref(j.candidate.policy) for j in judged if j.candidate.policy]
    if not refs:
        return None
    name = refs[0][0]
    return f"{name}@{min(v for n, v in refs if n == name)}"


def _completion(j: Judged) -> list[Message]:
    if step_of(j.candidate) is not None:  # a trajectory step: the action as an assistant turn
        return [parse_action(j.candidate.text).message()]
    return [Message(role="assistant", content=j.candidate.text)]


def _common(jset: JudgedSet, kind: str, *parts: object) -> dict:
    ref = jset.objective.ref
    if jset.late_labels:  # a re-scored set's records differ from the ones they supersede
        parts = (*parts, sorted(f.id for f in jset.late_labels))
    return dict(id="r-" + stable_id(jset.prompt.id, ref, kind, *parts), prompt_id=jset.prompt.id, objective=ref,
                prompt=list(jset.prompt.messages), source=jset.prompt.source, created_at=time.time(),
                rejudged_from=jset.rejudged_from)


def pair_record(jset: JudgedSet, chosen: Judged, rejected: Judged, flagged: bool = False) -> PreferenceRecord:
    return PreferenceRecord(
        **_common(jset, "pair", chosen.candidate.id, rejected.candidate.id),
        chosen=_completion(chosen), rejected=_completion(rejected),
        score_chosen=chosen.score, score_rejected=rejected.score, margin=round(chosen.score - rejected.score, 6),
        chosen_side=_side(chosen), rejected_side=_side(rejected), pairing=jset.objective.instantiation.pairs,
        length_chosen=length_of(chosen), length_rejected=length_of(rejected), length_flagged=flagged,
        policy=record_policy([chosen, rejected]),
    )


def unpaired_records(jset: JudgedSet, ranked: list[Judged]) -> tuple[list[UnpairedRecord], Counter]:
    """KTO/BCO: each distinct scored text at or above ``kto_desirable`` is desirable, at or
    below ``kto_undesirable`` undesirable; in between it yields nothing (counted)."""
    spec = jset.objective.instantiation
    out, counts = [], Counter()
    for j in _unique(ranked):
        if j.score + EPS >= spec.kto_desirable:
            label = True
        elif j.score - EPS <= spec.kto_undesirable:
            label = False
        else:
            counts["kto_between"] += 1
            continue
        counts["desirable" if label else "undesirable"] += 1
        out.append(UnpairedRecord(**_common(jset, "unpaired", j.candidate.id, label), completion=_completion(j),
                                  label=label, side=_side(j), policy=j.candidate.policy))
    return out, counts


def ranking_record(jset: JudgedSet, ranked: list[Judged]) -> RankingRecord | None:
    """Every distinct scored text, best first, with competition ranks (1, 2, 2, 4); none
    where fewer than two remain or they all tie."""
    unique = _unique(ranked)
    if len(unique) < 2 or unique[0].score - unique[-1].score <= EPS:
        return None
    items, rank_no = [], 0
    for i, j in enumerate(unique):
        if i == 0 or unique[i - 1].score - j.score > EPS:
            rank_no = i + 1
        items.append(Ranked(rank=rank_no, completion=_completion(j), side=_side(j)))
    return RankingRecord(**_common(jset, "ranking", [j.candidate.id for j in unique]), ranked=items,
                         policy=record_policy(unique))


def reward_records(jset: JudgedSet, ranked: list[Judged]) -> list[RewardRecord]:
    return [RewardRecord(**_common(jset, "reward", j.candidate.id), completion=_completion(j), reward=j.score,
                         side=_side(j), policy=j.candidate.policy) for j in _unique(ranked)]


def instantiate(jset: JudgedSet) -> tuple[list, Counter, str]:
    """Every record the objective asks for (each id once), the counts, and the no-pair reason."""
    spec = jset.objective.instantiation
    ranked = rank(jset.judged)
    pairs, counts, reason = select_pairs(jset, ranked)
    records: list = [pair_record(jset, c, r, flagged) for c, r, flagged in pairs]
    counts["pairs"] = len(records)
    if spec.kto:
        unpaired, kto_counts = unpaired_records(jset, ranked)
        records += unpaired
        counts.update(kto_counts)
    if spec.ranking and (ranking := ranking_record(jset, ranked)) is not None:
        records.append(ranking)
        counts["rankings"] = 1
    if spec.rewards:
        rewards = reward_records(jset, ranked)
        records += rewards
        counts["rewards"] = len(rewards)
    unique = list({r.id: r for r in records}.values())
    return unique, Counter({k: v for k, v in counts.items() if v}), reason


def by_step(jset: JudgedSet) -> dict[int | None, JudgedSet]:
    """The judged set per branch step, each with the prompt cut to the step's prefix (one
    set under ``None`` where the candidates are whole responses)."""
    steps: dict[int | None, list[Judged]] = {}
    for j in jset.judged:
        steps.setdefault(step_of(j.candidate), []).append(j)
    if list(steps) == [None]:
        return {None: jset}
    prompt = jset.prompt
    return {k: msgspec.structs.replace(jset, judged=js, prompt=msgspec.structs.replace(
        prompt, messages=prompt.messages if k is None else prompt.messages[:k]))
            for k, js in sorted(steps.items(), key=lambda kv: -1 if kv[0] is None else kv[0])}


def instantiate_steps(jset: JudgedSet) -> tuple[list, Counter, str]:
    """``instantiate`` per branch step (once for whole responses); records carry their step
    and difficulty."""
    records, counts, reasons = [], Counter(), []
    parts = by_step(jset)
    for step, part in parts.items():
        made, c, why = instantiate(part)
        tag = difficulty(pass_rate(part), jset.objective.instantiation)
        records += [msgspec.structs.replace(r, step=step, difficulty=tag) for r in made]
        counts.update(c)
        if why:
            reasons.append(why if step is None else f"step {step}: {why}")
    return records, counts, "; ".join(reasons)


def supersede(jset: JudgedSet, records: list) -> tuple[list, list[Withdrawn]]:
    """A re-scored set (a late label): each new record names the old record of its kind and
    step it replaces, in order; an old record with no successor is withdrawn."""
    if not jset.superseded_records:
        return records, []
    old: dict[tuple, list[str]] = {}
    for ref in jset.superseded_records:
        old.setdefault((ref.kind, ref.step), []).append(ref.id)
    out = []
    for r in records:
        queue = old.get((r.kind, r.step))
        out.append(msgspec.structs.replace(r, supersedes=queue.pop(0)) if queue else r)
    withdrawn = [Withdrawn(id="w-" + stable_id(rid, jset.id), prompt_id=jset.prompt.id, objective=jset.objective.ref,
                           supersedes=rid, created_at=time.time()) for ids in old.values() for rid in ids]
    return out, withdrawn


def process(jset: JudgedSet) -> list[Emit]:
    ref, pid = jset.objective.ref, jset.prompt.id
    records, counts, reason = instantiate_steps(jset)
    counts.update({k: v for k, v in jset.extra.items() if v})  # adaptive sampling's extra calls
    records, withdrawn = supersede(jset, records)
    topic = PREFERENCES_SHADOW if jset.objective.status == "shadow" else PREFERENCES
    gone = [Emit(topic, pid, w) for w in withdrawn]
    if not records:
        reason = reason or f"no records: the objective's instantiation made none ({dict(counts) or 'nothing on'})"
        outcome = Outcome(prompt_id=pid, objective=ref, status="no_pair", candidates=len(jset.judged),
                          reason=reason, created_at=time.time(), counts=dict(counts),
                          rejudged_from=jset.rejudged_from)
        return gone + [Emit(OUTCOMES, pid, outcome)]
    outcome = Outcome(prompt_id=pid, objective=ref, status="records", record_ids=[r.id for r in records],
                      candidates=len(jset.judged), reason=reason, created_at=time.time(), counts=dict(counts),
                      rejudged_from=jset.rejudged_from)
    return [Emit(topic, pid, r) for r in records] + gone + [Emit(OUTCOMES, pid, outcome)]


def bind(app, ctx) -> Handler:
    """The handler: judgments → preferences + prompt-stats + outcomes."""

    async def handler(jset: JudgedSet) -> list[Emit]:
        *records, outcome = process(jset)
        if jset.supersedes:  # a re-scored set: its prompt was counted when first judged
            return [*records, outcome]
        stats = Emit(PROMPT_STATS, jset.prompt.id, prompt_stats(jset, outcome.value))
        return [*records, stats, outcome]

    return handler
