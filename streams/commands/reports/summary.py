"""The data report's figures, gathered from a run directory or from the topics.

``prefstream run`` saves what a report needs beside ``preferences.jsonl`` (``save_run``):
``judgments.jsonl`` (every judged set: each candidate with every evaluator's Score),
``records.jsonl`` (every record of every kind, with both sides' per-evaluator scores),
``outcomes.jsonl`` and ``deadletters.jsonl``, one wire message a line. ``load_topics``
reads the same four things (live and shadow records) from the bus instead.

``figures()`` turns them into plain JSON (``prefstream report --json``); the HTML page
(``streams.commands.reports.html``) draws exactly these. A figure with nothing to measure is
``None`` with a ``note`` saying why, never 0. The bias figures are those of
``agents.evaluators.bias.BiasTracker``, per time bin, overall and per objective version.
Records a late label superseded, and ``Withdrawn`` markers, are left out (``live``).
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from schemas import AnyRecord, DeadLetter, JudgedSet, Outcome, PreferenceRecord
from streams.commands.reports import figures as f

logger = logging.getLogger(__name__)
FILES = {"judged": ("judgments.jsonl", JudgedSet), "records": ("records.jsonl", AnyRecord),
         "outcomes": ("outcomes.jsonl", Outcome), "letters": ("deadletters.jsonl", DeadLetter)}
TEXT_LIMIT = 4000  # characters of one sample text shown


class ReportError(Exception):
    pass


@dataclass
class Sources:
    origin: str
    judged: list[JudgedSet] = field(default_factory=list)
    records: list = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    skipped: int = 0  # records on the bus no codec could read (the agents dead-letter those)

    def only(self, objective: str) -> "Sources":
        """Keep what one objective (``NAME`` or ``NAME@VERSION``) made. A dead letter counts
        where its original message names the objective, or its prompt was seen under it."""
        name, _, version = objective.partition("@")

        def hit(ref: str) -> bool:  # a ref without a version (a prompt's) matches any version
            rname, _, rversion = ref.partition("@")
            return rname == name and (not version or not rversion or rversion == version)

        judged = [j for j in self.judged if hit(j.objective.ref)]
        records = [r for r in self.records if hit(r.objective)]
        outcomes = [o for o in self.outcomes if hit(o.objective)]
        pids = {j.prompt.id for j in judged} | {r.prompt_id for r in records} | {o.prompt_id for o in outcomes}
        letters = [d for d in self.letters if _keep_letter(d, hit, pids)]
        return Sources(f"{self.origin} (objective {objective})", judged, records, outcomes, letters, self.skipped)


def _keep_letter(d: DeadLetter, hit, pids: set[str]) -> bool:
    ref = _letter_objective(d)
    return hit(ref) if ref is not None else d.prompt_id in pids


def _letter_objective(d: DeadLetter) -> str | None:
    """The objective a dead letter's original message names (a prompt names one, later
    stages carry the whole spec), or None."""
    try:
        obj = msgspec.json.decode(d.original).get("objective") if d.original else None
    except (msgspec.DecodeError, AttributeError):
        return None
    if isinstance(obj, dict) and "name" in obj:
        return f"{obj['name']}@{obj.get('version', '')}".rstrip("@")
    return obj if isinstance(obj, str) else None


def save_run(out_dir: Path, judged, records, outcomes, letters) -> None:
    """Write the four files ``load_dir`` reads, each replaced whole (via a temporary file):
    they describe the latest run into ``out_dir``, where ``preferences.jsonl`` accumulates."""
    enc = msgspec.json.Encoder()
    for key, values in (("judged", judged), ("records", records), ("outcomes", outcomes), ("letters", letters)):
        path = out_dir / FILES[key][0]
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            for v in values:
                f.write(enc.encode(v) + b"\n")
        tmp.replace(path)


def load_dir(path: Path) -> Sources:
    if not path.is_dir():
        raise ReportError(f"{path} is not a directory; give the --out DIR of `prefstream run`")
    missing = [name for name, _ in FILES.values() if not (path / name).is_file()]
    if missing:
        raise ReportError(f"{path} has no {', '.join(missing)}: rerun `prefstream run --out {path}` with this "
                          "version (it saves them), or report from the bus with --topic")
    src = Sources(str(path))
    for key, (name, type_) in FILES.items():
        dec = msgspec.json.Decoder(type_)
        with (path / name).open("rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        getattr(src, key).append(dec.decode(line))
                    except msgspec.DecodeError as e:
                        raise ReportError(f"{path / name}:{n}: {e}") from None
    src.records = live(src.records)
    return src


def live(records: list) -> list:
    """The records a trainer gets: none a late label superseded, no ``Withdrawn`` markers."""
    gone = {r.supersedes for r in records if getattr(r, "supersedes", None)}
    return [r for r in records if r.id not in gone and r.kind != "withdrawn"]


async def load_topics(settings, topics) -> Sources:
    """Every judged set, record (live and shadow), outcome and dead letter on the bus,
    read up to each partition's read end (``streams.commands.reports.status``: Tansu's reported ends are wrong)."""
    from streams.commands.reports.status import open_consumer, partitions, read_all, read_ends

    wanted = {topics.judgments.name: "judged", topics.preferences.name: "records",
              topics.preferences_shadow.name: "records", topics.outcomes.name: "outcomes",
              topics.deadletters.name: "letters"}
    src = Sources(f"topics {topics.namespace}.* on {settings.broker}")
    consumer = await open_consumer(settings)
    try:
        tps = await partitions(consumer, list(wanted))
        if not tps:
            raise ReportError(f"no {topics.namespace}.* topics on {settings.broker}; check PREFSTREAM_NAMESPACE")
        async for rec in read_all(consumer, await read_ends(consumer, tps)):
            try:
                getattr(src, wanted[rec.topic]).append(topics.by_name(rec.topic).codec.decode(rec.value))
            except msgspec.DecodeError as e:
                src.skipped += 1  # the agents dead-letter what they cannot read; a report counts it
                logger.warning("skipped an undecodable record at %s[%d]@%d: %s", rec.topic, rec.partition,
                               rec.offset, e)
    finally:
        await consumer.stop()
    src.judged = list({j.id: j for j in src.judged}.values())  # at-least-once: replays count once
    src.records = live(list({r.id: r for r in src.records}.values()))
    src.outcomes = list({(o.prompt_id, o.objective): o for o in src.outcomes}.values())
    return src


# --- figures ----------------------------------------------------------------------------

def figures(src: Sources, objective: str | None = None, samples: int = 8, bins: int = 12) -> dict:
    if objective:
        src = src.only(objective)
    pairs = sorted((r for r in src.records if isinstance(r, PreferenceRecord)), key=lambda r: r.id)
    edges = f.edges([x.created_at for x in [*src.judged, *src.records]], bins)
    return {
        "source": src.origin, "objective": objective, "generated_at": time.time(),
        "totals": {"judged_sets": len(src.judged), "candidates": sum(len(j.judged) for j in src.judged),
                   "records": len(src.records), "pairs": len(pairs), "outcomes": len(src.outcomes),
                   "dead_letters": len(src.letters), "undecodable_skipped": src.skipped},
        "counts": f.counts(src, edges),
        "scores": f.scores(src.judged),
        "margins": f.margins(pairs),
        "length": f.length(src.judged, pairs),
        "bias": f.bias(src.judged, pairs, edges),
        "agreement": f.agreement(src.judged),
        "verifiers": f.verifiers(src.judged),
        "deadletters": f.deadletters(src.letters),
        "samples": sample_pairs(pairs, samples),
    }


def sample_pairs(pairs: list[PreferenceRecord], n: int) -> dict:
    if not pairs:
        return {"pairs": [], "of": 0, "note": "no pair records to sample"}
    chosen = sorted(random.Random(0).sample(pairs, min(n, len(pairs))), key=lambda r: r.id)
    return {"of": len(pairs), "pairs": [_sample(r) for r in chosen], "note": None}


def _sample(r: PreferenceRecord) -> dict:
    return {
        "id": r.id, "prompt_id": r.prompt_id, "objective": r.objective, "source": r.source,
        "pairing": r.pairing, "margin": r.margin, "length_flagged": r.length_flagged,
        "prompt": [{"role": m.role, "content": _cut(m.content or "")} for m in r.prompt],
        "chosen": _cut(_text(r.chosen)), "rejected": _cut(_text(r.rejected)),
        "score_chosen": r.score_chosen, "score_rejected": r.score_rejected,
        "model_chosen": r.chosen_side.model, "model_rejected": r.rejected_side.model,
        "scores_chosen": [_score(s) for s in r.chosen_side.scores],
        "scores_rejected": [_score(s) for s in r.rejected_side.scores],
    }


def _score(s) -> dict:
    raw = s.raw if isinstance(s.raw, (int, float)) or s.raw is None else _cut(str(s.raw), 300)
    return {"evaluator": s.evaluator, "kind": s.kind, "value": s.value, "raw": raw,
            "rationale": _cut(s.rationale, 1000), "error": s.error}


def _text(messages) -> str:
    return "\n".join(m.content or "" for m in messages)


def _cut(text: str, limit: int = TEXT_LIMIT) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"
