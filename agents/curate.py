"""curate: validate a production prompt and bind it to the objective that will process it.

prompts ──▶ [curate] ──▶ curated (one message per objective the prompt is routed to)

Personal data and secrets (e-mail, phone, card, IBAN, IP, API keys) are replaced by typed
placeholders before any model sees the prompt, as each objective's ``curation.pii`` asks.

A prompt goes to the objective it names (or the default objective when it names none and
no active objective's routing takes it) and to every objective whose routing (tags,
sources, a sampled fraction of prompt ids) takes it: shadow objectives included.

Per objective, with a ``CurateState`` (owned by the binding, bounded): duplicates and near
duplicates (``curation.dedup``, ``agents.dedup``) and prompts of low-utility families over
the objective's budget (``curation.utility``, ``agents.utility``; the estimates follow the
``prompt-stats`` topic) end as a ``dropped`` outcome with the reason instead of a curated
message. A full agent trajectory (its last turn an assistant's) is taken only by objectives
that branch it (``synthesis.branch``).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Mapping

import msgspec

from agents.dedup import DedupIndex, Embedder, prompt_text
from agents.pii import phone_regions, scrub
from agents.utility import REPLAY_MEMORY, Budget, Clusters, FamilyUtility, follow, tags_family
from schemas import Curated, ObjectiveSpec, Outcome, Prompt
from schemas.objectives import UtilitySpec
from streams.runtime import Blocked, Emit, Handler, Rejected
from streams.series import LoopCounter
from streams.settings import SettingsError
from streams.topics import CURATED, OUTCOMES

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 200_000
MAX_ID_CHARS = 512  # an id is a key on every topic and in every record
MAX_SIDE_BYTES = 64 * 1024  # tags + metadata (as JSON): they travel with every later message


def validate(prompt: Prompt, trajectory_ok: bool = False) -> None:
    """Refuse prompts no model should see; the reason names what is wrong. A history ending
    in an assistant turn is refused unless ``trajectory_ok`` (every objective branches it)."""
    if not prompt.id.strip():
        raise Rejected("prompt id is empty")
    if len(prompt.id) > MAX_ID_CHARS:
        raise Rejected(f"prompt id is {len(prompt.id)} characters, over the {MAX_ID_CHARS} limit; use a "
                       f"shorter id (or leave it out: `prefstream submit` derives one from the content)",
                       prompt.id[:MAX_ID_CHARS])
    side = len(msgspec.json.encode(prompt.metadata)) + sum(len(t) for t in prompt.tags)
    if side > MAX_SIDE_BYTES:
        raise Rejected(f"tags and metadata are {side} bytes, over the {MAX_SIDE_BYTES} limit; keep large "
                       f"context in the messages", prompt.id)
    if not prompt.messages:
        raise Rejected("prompt has no messages", prompt.id)
    if prompt.messages[-1].role == "assistant" and not trajectory_ok:
        raise Rejected("the last message is an assistant turn; there is nothing to respond to (an objective "
                       "with synthesis.branch continues a full trajectory)", prompt.id)
    size = sum(len(m.content or "") for m in prompt.messages)
    if size == 0:
        raise Rejected("every message is empty", prompt.id)
    if size > MAX_PROMPT_CHARS:
        raise Rejected(f"prompt is {size} characters, over the {MAX_PROMPT_CHARS} limit", prompt.id)
    v = prompt.verification
    if v is not None and v.kind == "ifeval" and len(v.instruction_id_list) != len(v.kwargs):
        raise Rejected("ifeval verification needs one kwargs entry per instruction id", prompt.id)


def in_sample(prompt_id: str, fraction: float) -> bool:
    """Whether a prompt falls in a ``fraction`` sample: a hash of its id alone, so the same
    prompts are picked on every worker and replay, and every objective sampling 10% sees
    the same 10% (their records can be compared)."""
    return int(hashlib.sha256(prompt_id.encode()).hexdigest()[:15], 16) / 16**15 < fraction


def matches(spec: ObjectiveSpec, prompt: Prompt) -> bool:
    """Whether ``spec``'s routing takes ``prompt`` (never for a retired objective, or one
    with no routing criterion)."""
    r = spec.routing
    if spec.status == "retired" or not (r.tags or r.sources or r.fraction is not None):
        return False
    if r.tags and not set(r.tags) & set(prompt.tags):
        return False
    if r.sources and prompt.source not in r.sources:
        return False
    return r.fraction is None or in_sample(prompt.id, r.fraction)


def named(prompt: Prompt, objectives: Mapping[str, ObjectiveSpec], default: str) -> str | None:
    """The objective the prompt names, else the default unless routing gave it an active one."""
    if prompt.objective:
        return prompt.objective
    if any(s.status == "active" and matches(s, prompt) for s in objectives.values()):
        return None
    return default


def route(prompt: Prompt, objectives: Mapping[str, ObjectiveSpec], default: str) -> list[ObjectiveSpec]:
    """Every objective this prompt goes to: the one it names (or the default), then each
    whose routing takes it, by name. A named objective that is unknown or retired refuses it."""
    name = named(prompt, objectives, default)
    out = []
    if name is not None:
        spec = objectives.get(name)
        if spec is None:
            raise Rejected(f"unknown objective {name!r}; publish it first (prefstream objective apply FILE)",
                           prompt.id)
        if spec.status == "retired":
            raise Rejected(f"objective {spec.ref} is retired", prompt.id)
        out.append(spec)
    out += sorted((s for s in objectives.values() if s.name != name and matches(s, prompt)), key=lambda s: s.name)
    return out


def scrub_prompt(prompt: Prompt, kinds: list[str], regions: tuple[str, ...] = ()) -> tuple[Prompt, dict[str, int]]:
    """The prompt with personal data and secrets replaced in every message (and in a
    captured production response), and the counts per kind; ``regions``: the ISO regions
    whose national phone numbers are found too."""
    if not kinds:
        return prompt, {}
    total: Counter = Counter()
    messages = []
    for m in prompt.messages:
        text, found = scrub(m.content or "", kinds, regions)
        total += found
        messages.append(msgspec.structs.replace(m, content=text) if found else m)
    meta = prompt.metadata
    if isinstance(meta.get("production_response"), str):
        text, found = scrub(meta["production_response"], kinds, regions)
        total += found
        meta = {**meta, "production_response": text}
    if not total:
        return prompt, {}
    return msgspec.structs.replace(prompt, messages=messages, metadata=meta), dict(total)


@dataclass
class CurateState:
    """What curate remembers between prompts (bounded): per objective a dedup index, a
    generation budget and embedding clusters; the family utility estimates; and each
    (objective, prompt id)'s decision, so a replayed prompt gets the same one."""

    embedder: Embedder = field(default_factory=Embedder)
    families: FamilyUtility = field(default_factory=FamilyUtility)
    indexes: dict[str, DedupIndex] = field(default_factory=dict)
    budgets: dict[str, Budget] = field(default_factory=dict)
    clusters: dict[str, Clusters] = field(default_factory=dict)
    decisions: OrderedDict = field(default_factory=OrderedDict)
    max_decisions: int = REPLAY_MEMORY

    def decide(self, prompt: Prompt, spec: ObjectiveSpec) -> tuple[str | None, str | None, str | None]:
        """``(family, why it is dropped or None, the drop's kind)``, remembered per prompt id."""
        key = (spec.name, prompt.id)
        if key not in self.decisions:
            self.decisions[key] = self._decide(prompt, spec)
            if len(self.decisions) > self.max_decisions:
                self.decisions.popitem(last=False)
        return self.decisions[key]

    def _decide(self, prompt: Prompt, spec: ObjectiveSpec) -> tuple[str | None, str | None, str | None]:
        dedup, u = spec.curation.dedup, spec.curation.utility
        index, found, text = None, None, prompt_text(prompt)
        if dedup.mode != "off" and text:
            index = self.indexes.get(spec.name)
            if index is None or index.spec.window != dedup.window:
                index = self.indexes[spec.name] = DedupIndex(dedup, self.embedder)
            index.spec = dedup
            dup, found = index.find(prompt.id, text)
            if dup is not None:
                return None, dup.reason, "duplicate"
        family = None
        if u.budget is not None:
            family = self.prompt_family(prompt, spec, text)
            budget = self.budgets.setdefault(spec.name, Budget(u.burst))
            budget.burst = u.burst
            if not budget.admit(self.families.is_low(spec.name, family, u), u.budget):
                value, n = self.families.estimate(spec.name, family)
                why = (f"low-utility family {family!r} (utility {value:.2f} < {u.low} over {n} judged sets): "
                       f"its share of generation is at the objective's budget {u.budget}")
                return family, why, "low_utility"
        if index is not None:
            index.add(prompt.id, found)
        return family, None, None

    def prompt_family(self, prompt: Prompt, spec: ObjectiveSpec, text: str) -> str:
        u = spec.curation.utility
        if u.family == "source":
            return f"source:{prompt.source}"
        if u.family == "cluster" and text:
            vec = self.embedder.encode([text])[0]
            return self.clusters.setdefault(spec.name, Clusters()).assign(prompt.id, vec, u.cluster_threshold)
        return tags_family(prompt)


def uses_embedder(specs) -> bool:
    return any(s.curation.dedup.mode == "near" or (s.curation.utility.budget is not None
                                                   and s.curation.utility.family == "cluster") for s in specs)


def screen(prompt: Prompt, spec: ObjectiveSpec, state: CurateState | None) -> tuple[Prompt, Outcome | None]:
    """The prompt as this objective takes it (with its ``metadata.family`` where utility is
    on), or a ``dropped`` outcome saying why (a duplicate, a low-utility family over budget)."""
    if state is None:
        return prompt, None
    family, reason, kind = state.decide(prompt, spec)
    if family is not None:
        prompt = msgspec.structs.replace(prompt, metadata={**prompt.metadata, "family": family})
    if reason is None:
        return prompt, None
    return prompt, Outcome(prompt_id=prompt.id, objective=spec.ref, status="dropped", reason=reason,
                           created_at=time.time(), counts={kind: 1})


def process(prompt: Prompt, objectives: Mapping[str, ObjectiveSpec], default: str,
            state: CurateState | None = None, regions: tuple[str, ...] = ()) -> list[Emit]:
    """One ``Curated`` per objective the prompt goes to, each carrying the spec live now and
    the prompt scrubbed as that objective asks (``regions``: the operator's phone regions,
    ``pii_phone_regions``); with ``state``, a ``dropped`` outcome instead for an objective
    that takes it as a duplicate or over its low-utility budget."""
    validate(prompt, trajectory_ok=True)
    specs = route(prompt, objectives, default)
    if prompt.messages[-1].role == "assistant" and not all(s.synthesis.branch != "off" for s in specs):
        validate(prompt)  # refuses it, with the reason
    now = time.time()
    out = []
    for spec in specs:
        clean, counts = scrub_prompt(prompt, list(spec.curation.pii), regions)
        clean, dropped = screen(clean, spec, state)
        if dropped is not None:
            out.append(Emit(OUTCOMES, prompt.id, dropped))
            continue
        out.append(Emit(CURATED, prompt.id, Curated(prompt=clean, objective=spec, curated_at=now, scrubbed=counts)))
    return out


def bind(app, ctx) -> Handler:
    """The handler: prompts → curated. Waits until the objectives are read up to date,
    and briefly for a named objective not yet published."""

    state = CurateState()
    try:
        regions = phone_regions(ctx.settings.pii_phone_regions)
    except ValueError as e:
        raise SettingsError(f"PREFSTREAM_PII_PHONE_REGIONS={ctx.settings.pii_phone_regions!r}: {e}") from None

    async def handler(prompt: Prompt) -> list[Emit]:
        registry, default = ctx.objectives, ctx.settings.default_objective
        await registry.wait_ready(ctx.settings.objective_wait_s)
        name = named(prompt, registry.specs, default)
        if not registry.specs or (name is not None and name not in registry.specs and not prompt.objective):
            # nothing to route by, or the default missing: the deployment's fault, not the prompt's
            missing = "no objective published" if not registry.specs else f"the default objective {name!r} is not published"
            raise Blocked("no_objective", missing, "prefstream objective apply FILE")
        if name is not None and name not in registry.specs:
            await registry.wait_for(name, ctx.settings.objective_wait_s)
        if not state.embedder.loaded and uses_embedder(registry.specs.values()):
            await asyncio.to_thread(state.embedder.load)  # once, off the event loop (not a thread hop per prompt)
        emits = process(prompt, registry.specs, default, state, regions)
        for e in emits:
            if isinstance(e.value, Outcome):
                dropped.labels(next(iter(e.value.counts), "other")).inc()
                continue
            for kind, n in e.value.scrubbed.items():
                scrubbed.labels(kind).inc(n)
        return emits

    def decay(name: str) -> float:
        spec = ctx.objectives.specs.get(name)
        return (spec.curation.utility if spec else UtilitySpec()).decay

    @app.task
    async def follow_prompt_stats() -> None:
        await follow(ctx.settings, ctx.topics, state.families, decay)

    scrubbed = LoopCounter("prefstream_pii_scrubbed_total", "Personal data and secrets replaced in prompts",
                        ["kind"], registry=ctx.metrics.registry)
    dropped = LoopCounter("prefstream_curation_dropped_total", "Prompts curate dropped for an objective, by reason "
                       "(duplicate, low_utility)", ["reason"], registry=ctx.metrics.registry)
    return handler
