"""curate: validate a production prompt and bind it to the objective that will process it.

prompts ──▶ [curate] ──▶ curated
"""
from __future__ import annotations

import logging
import time
from typing import Mapping

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


def route(prompt: Prompt, objectives: Mapping[str, ObjectiveSpec], default: str) -> ObjectiveSpec:
    name = prompt.objective or default
    spec = objectives.get(name)
    if spec is None:
        raise Rejected(f"unknown objective {name!r}; publish it first (prefstream run --objective FILE)",
                       prompt.id)
    if spec.status == "retired":
        raise Rejected(f"objective {spec.ref} is retired", prompt.id)
    return spec


def process(prompt: Prompt, objectives: Mapping[str, ObjectiveSpec], default: str) -> list[Emit]:
    validate(prompt)
    spec = route(prompt, objectives, default)
    return [Emit("curated", prompt.id, Curated(prompt=prompt, objective=spec, curated_at=time.time()))]


def bind(app, ctx) -> None:
    """The faust agent: prompts → curated. Waits briefly for an objective not yet read."""

    async def handler(prompt: Prompt) -> list[Emit]:
        name = prompt.objective or ctx.settings.default_objective
        await ctx.objectives.wait_for(name, ctx.settings.objective_wait_s)
        return process(prompt, ctx.objectives.specs, ctx.settings.default_objective)

    ctx.agent(app, "curate", ctx.topics.prompts, handler)
