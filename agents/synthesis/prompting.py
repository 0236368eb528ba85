"""How a prompt reaches a model: chat messages, or few-shot completion text for base models."""
from __future__ import annotations

import json

from schemas import Message, Prompt, SynthesisSpec

_LABEL = {"user": "User", "assistant": "Assistant", "tool": "Tool result"}


def tool_calls_text(calls: list[dict]) -> str:
    """OpenAI-shaped tool calls as text: ``name(arguments); …``."""
    return "; ".join(f"{c.get('function', {}).get('name', '?')}({c.get('function', {}).get('arguments', '')})"
                     for c in calls)


def _turn(m: Message) -> str:
    text = m.content or ""
    if m.tool_calls:
        text = (text + "\n" if text else "") + f"[calls {tool_calls_text(m.tool_calls)}]"
    label = _LABEL[m.role] + (f" ({m.name})" if m.role == "tool" and m.name else "")
    return f"{label}: {text}"


def render_completion(prompt: Prompt, spec: SynthesisSpec, system: str | None = None) -> str:
    """Few-shot completion text. A single question becomes ``Question: …\\nAnswer:``; a
    longer history (earlier turns, tool calls and results) becomes a transcript that ends
    where the next assistant turn begins."""
    shots = "".join(f"Question: {s.question}\nAnswer: {s.answer}\n\n" for s in spec.few_shot)
    systems = [m.content or "" for m in prompt.messages if m.role == "system"]
    if system:
        systems.insert(0, system)
    head = "\n".join(systems) + "\n\n" if systems else ""
    turns = [m for m in prompt.messages if m.role != "system"]
    if len(turns) == 1 and turns[0].role == "user":
        return f"{head}{shots}Question: {turns[0].content or ''}\nAnswer:"
    transcript = "\n".join(_turn(m) for m in turns)
    return f"{head}{shots}{transcript}\nAssistant:"


def chat_messages(prompt: Prompt, system: str | None = None) -> list[Message]:
    msgs = list(prompt.messages)
    return [Message(role="system", content=system), *msgs] if system else msgs


def last_user_text(prompt: Prompt) -> str:
    return next((m.content or "" for m in reversed(prompt.messages) if m.role == "user"), "")


def principles_text(principles: list[str]) -> str:
    return "\n".join(f"- {p}" for p in principles) or "- Be helpful, correct and honest."


def contrastive_prompts(spec: SynthesisSpec, principles: list[str]) -> tuple[str, str]:
    """RLCD's pair of system prompts: one that asks for the principles, one that asks for
    their opposite."""
    rules = principles_text(principles)
    pos = spec.positive_prompt or f"Answer well. Follow every one of these principles:\n{rules}"
    neg = spec.negative_prompt or (f"Answer badly. Break these principles: be wrong, ignore instructions, "
                                   f"ramble off topic:\n{rules}")
    return pos, neg


def critique_prompt(question: str, response: str, principle: str) -> str:
    return (f"Question: {question}\nResponse: {response}\n"
            f"Principle: {principle}\n"
            f"Critique: point out where the response falls short of the principle, briefly.\nCritique:")


def revision_prompt(question: str, response: str, critique: str) -> str:
    return (f"Question: {question}\nResponse: {response}\nCritique: {critique}\n"
            f"Rewrite the response so that it fixes every point of the critique.\nQuestion: {question}\nAnswer:")


def as_json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)
