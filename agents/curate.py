"""curate: validate a production prompt and bind it to the objective that will process it.

prompts ──▶ [curate] ──▶ curated (one message per objective the prompt is routed to)

Personal data and secrets (e-mail, phone, card, IBAN, IP, API keys) are replaced by typed
placeholders before any model sees the prompt, as each objective's ``curation.pii`` asks.

A prompt goes to the objective it names (or the default objective when it names none and
no active objective's routing takes it) and to every objective whose routing (tags,
sources, a sampled fraction of prompt ids) takes it: shadow objectives included.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from typing import Mapping

import msgspec
from prometheus_client import Counter as Counter_

from agents.pii import scrub
from schemas import Curated, ObjectiveSpec, Prompt
from streams.runtime import Emit, Rejected

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 200_000


def validate(prompt: Prompt) -> None:
    """Refuse prompts no model should see; the reason names what is wrong."""
    if not prompt.id.strip():
        raise Rejected("prompt id is empty")
    if not prompt.messages:
        raise Rejected("prompt has no messages", prompt.id)
    if prompt.messages[-1].role == "assistant":
        raise Rejected("the last message is an assistant turn; there is nothing to respond to", prompt.id)
    size = sum(len(m.content or "") for m in prompt.messages)
    if size == 0:
        raise Rejected("every message is empty", prompt.id)
    if size > MAX_PROMPT_CHARS:
        raise Rejected(f"prompt is {size} characters, over the {MAX_PROMPT_CHARS} limit", prompt.id)
    v = prompt.verification
    if v is not None and v.kind == "ifeval" and len(v.instruction_id_list) != len(v.kwargs):
        raise Rejected("ifeval verification needs one kwargs entry per instruction id", prompt.id)


def sampled(prompt_id: str, fraction: float) -> bool:
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
    return r.fraction is None or sampled(prompt.id, r.fraction)


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


def scrub_prompt(prompt: Prompt, kinds: list[str]) -> tuple[Prompt, dict[str, int]]:
    """The prompt with personal data and secrets replaced in every message (and in a
    captured production response), and the counts per kind."""
    if not kinds:
        return prompt, {}
    total: Counter = Counter()
    messages = []
    for m in prompt.messages:
        text, found = scrub(m.content or "", kinds)
        total += found
        messages.append(msgspec.structs.replace(m, content=text) if found else m)
    meta = prompt.metadata
    if isinstance(meta.get("production_response"), str):
        text, found = scrub(meta["production_response"], kinds)
        total += found
        meta = {**meta, "production_response": text}
    if not total:
        return prompt, {}
    return msgspec.structs.replace(prompt, messages=messages, metadata=meta), dict(total)


def process(prompt: Prompt, objectives: Mapping[str, ObjectiveSpec], default: str) -> list[Emit]:
    """One ``Curated`` per objective the prompt goes to, each carrying the spec live now and
    the prompt scrubbed as that objective asks."""
    validate(prompt)
    now = time.time()
    out = []
    for spec in route(prompt, objectives, default):
        clean, counts = scrub_prompt(prompt, list(spec.curation.pii))
        out.append(Emit("curated", prompt.id, Curated(prompt=clean, objective=spec, curated_at=now, scrubbed=counts)))
    return out


def bind(app, ctx) -> None:
    """The faust agent: prompts → curated. Waits until the objectives are read up to date,
    and briefly for a named objective not yet published."""

    async def handler(prompt: Prompt) -> list[Emit]:
        registry, default = ctx.objectives, ctx.settings.default_objective
        await registry.wait_ready(ctx.settings.objective_wait_s)
        name = named(prompt, registry.specs, default)
        if name is not None and name not in registry.specs:
            await registry.wait_for(name, ctx.settings.objective_wait_s)
        emits = process(prompt, registry.specs, default)
        for e in emits:
            for kind, n in e.value.scrubbed.items():
                scrubbed.labels(kind).inc(n)
        return emits

    scrubbed = Counter_("prefstream_pii_scrubbed_total", "Personal data and secrets replaced in prompts",
                        ["kind"], registry=ctx.metrics.registry)
    ctx.agent(app, "curate", ctx.topics.prompts, handler)
