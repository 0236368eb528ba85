"""The ``prompts`` and ``curated`` topics: a prompt as production sends it."""
from __future__ import annotations

from typing import Any, Literal

from schemas.base import Part, Wire, stable_id
from schemas.objectives import ObjectiveRef, ObjectiveSpec, bind_ref


class Message(Part, kw_only=True):
    """One chat turn (OpenAI/TRL shape). Tool calls and tool results fit, so agent
    trajectories travel as plain history."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class Verification(Part, kw_only=True):
    """How a response to this prompt can be checked by code.

    ``math``: ``answer`` is the reference final answer (GSM8K's text after ``####``).
    ``ifeval``: ``instruction_id_list`` + ``kwargs`` as IFEval defines them.
    ``code``: ``tests``, Python snippets (usually ``assert``s) run after the response's code.
    ``json_schema``: the response must be JSON valid against ``json_schema``.
    ``regex``: the response must contain a match of ``pattern`` (all of it, with ``fullmatch``).
    """

    kind: Literal["math", "ifeval", "code", "json_schema", "regex"]
    answer: str | None = None
    instruction_id_list: list[str] = []
    kwargs: list[dict[str, Any]] = []
    tests: list[str] = []
    json_schema: dict[str, Any] | None = None
    pattern: str | None = None
    fullmatch: bool = False


class Prompt(Wire, tag="prompt.v1", kw_only=True):
    id: str
    messages: list[Message]
    objective: str | None = None
    tags: list[str] = []
    source: str = "unknown"
    metadata: dict[str, Any] = {}
    verification: Verification | None = None
    created_at: float = 0.0


def prompt_id(messages: list[Message], source: str) -> str:
    """Content-derived prompt id: the same prompt from the same source gets the same id."""
    return "p-" + stable_id(source, messages)


class Curated(Wire, tag="curated.v1", kw_only=True):
    """A validated, scrubbed prompt bound to the objective version that will process it.

    The message names that version (``objective_ref``, ``name@version``), so every later
    stage applies the version that was live when the prompt was consumed: each resolves the
    reference from every published version it holds (``agents.objectives.registry``), and
    the reference travels on through candidates and judgments. ``objective`` is the spec:
    in memory once resolved; on the bus only in messages written before references (those
    are read as they are, by the spec they carry).
    """

    prompt: Prompt
    objective: ObjectiveSpec | None = None
    curated_at: float = 0.0
    scrubbed: dict[str, int] = {}  # PII and secrets replaced, per kind
    objective_ref: ObjectiveRef = ""

    def __post_init__(self) -> None:
        bind_ref(self)

