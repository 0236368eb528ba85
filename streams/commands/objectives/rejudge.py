"""Re-judge stored candidate sets under another objective version, with no generator call
(``prefstream rejudge``).

The ``candidates`` topic keeps every candidate set (``PREFSTREAM_CANDIDATES_RETENTION_MS``,
30 days by default). ``rejudge`` picks sets from it, and re-publishes each to ``candidates``
bound to the new spec, with ``rejudged_from`` naming the set first made; the workers'
evaluate → instantiate stages do the rest, as for any set. The new set's id hashes the first
set's id and the new objective@version, so the judged set and the records it makes have
deterministic ids: a set already re-judged under that version is not published again, and a
replay writes nothing new at the sinks. The summary is ``objective compare``'s, on the
prompts re-judged: the first version's choices against the new one's.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import msgspec

from schemas import CandidateSet, ObjectiveSpec, Outcome, PreferenceRecord, stable_id
from schemas.judgments import judged_id
from streams.commands.objectives.compare import parse_side

logger = logging.getLogger(__name__)


@dataclass
class Selection:
    """What ``rejudge`` will publish: the new sets, and the origins already re-judged."""

    target: ObjectiveSpec
    new: list[CandidateSet] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # origin set ids already re-judged under target
    from_refs: dict[str, str] = field(default_factory=dict)  # origin set id → the ref it was judged under

    @property
    def origins(self) -> list[str]:
        return list(self.from_refs)


def rejudged_id(origin: str, ref: str) -> str:
    return "s-" + stable_id(origin, ref)


def _matches(cset: CandidateSet, at: float, target: ObjectiveSpec, source: str | None, since: float | None,
             prompt_ids: set[str] | None) -> bool:
    if source is not None:
        name, version = parse_side(source)
        if cset.objective.name != name or (version is not None and cset.objective.version != version):
            return False
    elif cset.objective.name != target.name:
        return False
    if since is not None and max(at, cset.created_at) < since:
        return False
    return prompt_ids is None or cset.prompt.id in prompt_ids


def select(stored: list[tuple[CandidateSet, float]], target: ObjectiveSpec, source: str | None = None,
           since: float | None = None, prompt_ids: set[str] | None = None) -> Selection:
    """The stored sets (``(set, broker time)``) to re-judge under ``target``: those judged under
    ``source`` (``NAME`` or ``NAME@V``; else any other version of the target's name), since a
    time, of some prompts. One per first set (a set re-judged before counts as its first)."""
    sel = Selection(target)
    existing = {c.id for c, _ in stored}
    picked: dict[str, CandidateSet] = {}
    for cset, at in stored:
        if cset.objective.ref == target.ref or not _matches(cset, at, target, source, since, prompt_ids):
            continue
        origin = cset.rejudged_from or cset.id
        if origin not in picked or (cset.rejudged_from is None and picked[origin].rejudged_from is not None):
            picked[origin] = cset
    for origin, cset in picked.items():
        new_id = rejudged_id(origin, target.ref)
        sel.from_refs[origin] = cset.objective.ref
        if new_id in existing:
            sel.done.append(origin)
            continue
        sel.new.append(msgspec.structs.replace(cset, id=new_id, objective=target, rejudged_from=origin,
                                               created_at=time.time()))
    return sel


def progress(outcomes: list[Outcome], sel: Selection) -> set[str]:
    """The first sets (by judged-set id) whose re-judged outcome has arrived."""
    want = {judged_id(o) for o in sel.origins}
    return {o.rejudged_from for o in outcomes if o.rejudged_from in want and o.objective == sel.target.ref}


def failed(letters: list, sel: Selection, since: float) -> set[str]:
    """The first sets whose re-judged set was dead-lettered (by prompt id, since ``since``)."""
    hit = {d.prompt_id for d in letters if d.stage in ("evaluate", "instantiate") and d.created_at >= since}
    return {c.rejudged_from for c in sel.new if c.prompt.id in hit}


def summaries(values: list, sel: Selection) -> list[dict]:
    """``objective compare`` per version re-judged from, on the prompts re-judged: the first
    outcome of each first set against its re-judged outcome."""
    from streams.commands.objectives.compare import compare

    records = [v for v in values if isinstance(v, PreferenceRecord)]
    outcomes = [v for v in values if isinstance(v, Outcome)]
    out = []
    for ref in sorted(set(sel.from_refs.values())):
        origins = [o for o, r in sel.from_refs.items() if r == ref]
        judged = {judged_id(o) for o in origins}
        firsts = [o for o in outcomes if o.objective == ref and o.rejudged_from is None]
        seconds = [o for o in outcomes if o.objective == sel.target.ref and o.rejudged_from in judged]
        pids = {o.prompt_id for o in seconds}
        out.append(compare(records + [o for o in firsts if o.prompt_id in pids] + seconds, ref, sel.target.ref))
    return out
