"""Reading prompts from files: GSM8K, IFEval, chat and plain-prompt JSONL lines.

The format of each line is detected; a line of no known format is reported with its
line number.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import msgspec

from schemas import Message, Prompt, Verification, prompt_id


class InputError(ValueError):
    pass


_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)


def _gsm8k(d: dict) -> Prompt:
    m = _GSM8K_ANSWER.search(d["answer"])
    if not m:
        raise ValueError("GSM8K line has no `#### answer`")
    msgs = [Message(role="user", content=d["question"])]
    return _prompt(d, msgs, "gsm8k", Verification(kind="math", answer=m.group(1).replace(",", "")),
                   {"reference": d["answer"]})


def _ifeval(d: dict) -> Prompt:
    msgs = [Message(role="user", content=d["prompt"])]
    v = Verification(kind="ifeval", instruction_id_list=list(d["instruction_id_list"]),
                     kwargs=[{k: x for k, x in kw.items() if x is not None} for kw in d["kwargs"]])
    meta = {"key": d["key"]} if "key" in d else {}
    return _prompt(d, msgs, "ifeval", v, meta)


def _chat(d: dict) -> Prompt:
    msgs = msgspec.convert(d["messages"], list[Message])
    return _prompt(d, msgs, "chat", _verification(d), {})


def _plain(d: dict) -> Prompt:
    return _prompt(d, [Message(role="user", content=d["prompt"])], "prompt", _verification(d), {})


_NEEDS = {"code": "tests", "json_schema": "json_schema", "regex": "pattern"}  # kind → the field it checks by


def _verification(d: dict) -> Verification | None:
    if "verification" in d:
        v = msgspec.convert(d["verification"], Verification)
        need = _NEEDS.get(v.kind)
        if need and not getattr(v, need):
            raise ValueError(f"verification kind {v.kind!r} needs a non-empty `{need}`")
        return v
    if "answer" in d:
        return Verification(kind="math", answer=str(d["answer"]))
    return None


def _prompt(d: dict, msgs: list[Message], default_source: str, v: Verification | None,
            meta: dict[str, Any]) -> Prompt:
    source = d.get("source") or default_source
    meta = {**meta, **(d.get("metadata") or {})}
    return Prompt(id=d.get("id") or prompt_id(msgs, source), messages=msgs, objective=d.get("objective"),
                  tags=list(d.get("tags") or []), source=source, metadata=meta, verification=v)


def detect(d: dict) -> str:
    if "question" in d and "answer" in d:
        return "gsm8k"
    if "prompt" in d and "instruction_id_list" in d:
        return "ifeval"
    if "messages" in d:
        return "chat"
    if "prompt" in d:
        return "prompt"
    raise ValueError("unknown format: expected GSM8K (question/answer), IFEval (prompt/instruction_id_list/"
                     "kwargs), chat (messages) or plain (prompt) keys; got " + ", ".join(sorted(d)[:8]))


_PARSERS = {"gsm8k": _gsm8k, "ifeval": _ifeval, "chat": _chat, "prompt": _plain}


def parse_line(d: Any) -> Prompt:
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    return _PARSERS[detect(d)](d)


def read_prompts(path: str | Path, limit: int | None = None) -> Iterator[Prompt]:
    """Prompts from a JSONL file; raises InputError naming the file and line of a bad line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file {path} does not exist")
    count = 0
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and count >= limit:
                return
            try:
                yield parse_line(json.loads(line))
            except (ValueError, KeyError, TypeError, msgspec.ValidationError) as e:
                raise InputError(f"{path}:{lineno}: {e}") from None
            count += 1
