"""What `POST /v1/prompts` and `POST /v1/feedback` accept: the body split into items, each item
checked against an explicit list of fields, then parsed (all-or-nothing, ``streams.commands.serving.server``).

A client sets only what a client may know. Refused, with the fields named:

- any field not listed below (``id``, ``created_at``, ``user``, …: the server sets those);
- ``source: proxy`` and ``metadata`` keys ``key_hash`` or ``production_*``: only the capture
  proxy records production responses;
- anything that makes a verification (``verification``, a reference ``answer``, IFEval's
  ``instruction_id_list``/``kwargs``) unless the key is listed in
  ``PREFSTREAM_INGEST_VERIFICATION_KEYS``: a verification decides which response is chosen, and
  code tests run in the sandbox.
"""
from __future__ import annotations

import time
from typing import Any

import msgspec

from schemas import Feedback, Prompt
from schemas.feedback import feedback_id
from streams.commands.serving.inputs import detect, parse_line

PROMPT_FIELDS = frozenset({"prompt", "messages", "question", "answer", "instruction_id_list", "kwargs", "key",
                           "objective", "tags", "source", "metadata", "verification"})
VERIFYING = ("verification", "answer", "instruction_id_list", "kwargs")  # fields that make a Verification
FEEDBACK_FIELDS = frozenset({"prompt_id", "kind", "value", "candidate_id", "response_id", "other_id"})
PIPELINE_SOURCES = frozenset({"proxy"})
VERIFICATION_SETTING = "PREFSTREAM_INGEST_VERIFICATION_KEYS"
MAX_ERRORS = 20  # errors listed in a refusal; the rest are counted


class TooMany(ValueError):
    """More items in one request than ``ingest_max_items``."""


def split_items(body: bytes, max_items: int | None = None) -> list[tuple[int, Any, str | None]]:
    """(index, item, error) for each item of a JSON object, JSON array or JSON-lines body."""
    try:
        doc = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        lines = [ln for ln in body.splitlines() if ln.strip()]
        if len(lines) < 2:
            return [(0, None, f"body is not valid JSON ({_why(exc)}; expected an object, an array or JSON lines)")]
        _cap(len(lines), max_items)
        return [(i, *_decode(line)) for i, line in enumerate(lines)]
    items = doc if isinstance(doc, list) else [doc]
    _cap(len(items), max_items)
    return [(i, item, None) for i, item in enumerate(items)]


def _cap(count: int, max_items: int | None) -> None:
    if max_items is not None and count > max_items:
        raise TooMany(f"{count} items is over the {max_items}-item limit per request "
                      "(PREFSTREAM_INGEST_MAX_ITEMS); split the batch")


def _decode(line: bytes) -> tuple[Any, str | None]:
    try:
        return msgspec.json.decode(line), None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        return None, f"invalid JSON: {_why(exc)}"


def _why(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeDecodeError) or "UTF-8" in str(exc):
        return "not UTF-8 text"
    return str(exc)[:200]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return (f"missing field {exc}" if isinstance(exc, KeyError) else str(exc))[:300]


def screen_prompt(item: Any, may_verify: bool) -> None:
    """ValueError naming every field of ``item`` a client may not send."""
    if not isinstance(item, dict):
        raise ValueError(f"expected a JSON object, got {type(item).__name__}")
    detect(item)  # an item of no known format is refused as that, with its keys
    unknown = sorted(set(item) - PROMPT_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(map(str, unknown))[:200]}; "
                         f"accepted: {', '.join(sorted(PROMPT_FIELDS))}")
    if item.get("source") in PIPELINE_SOURCES:
        raise ValueError(f"source {item['source']!r} is set only by the capture proxy")
    meta = item.get("metadata")
    reserved = sorted(k for k in meta if k == "key_hash" or str(k).startswith("production_")) \
        if isinstance(meta, dict) else []
    if reserved:
        raise ValueError(f"metadata {', '.join(reserved)[:200]}: set only by the server and the capture proxy")
    verifying = [f for f in VERIFYING if f in item]
    if verifying and not may_verify:
        raise ValueError(f"{', '.join(verifying)}: this key may not send verification (reference answers, "
                         f"tests, schemas, patterns); list it in {VERIFICATION_SETTING}")


def parse_prompts(body: bytes, key: str, objective: str | None = None, may_verify: bool = False,
                  max_items: int | None = None) -> tuple[list[Prompt], list[dict]]:
    """All prompts of the body, or the errors of every bad item (all-or-nothing)."""
    prompts, errors, now = [], [], time.time()
    for i, item, err in split_items(body, max_items):
        try:
            if err:
                raise ValueError(err)
            screen_prompt(item, may_verify)
            p = parse_line(item)
        except (ValueError, KeyError, TypeError, RecursionError, msgspec.ValidationError) as exc:
            errors.append({"index": i, "reason": _reason(exc)})
            continue
        prompts.append(msgspec.structs.replace(
            p, objective=objective or p.objective, metadata={**p.metadata, "key_hash": key},
            created_at=p.created_at or now))
    return prompts, errors


def parse_feedback(body: bytes, key: str, max_items: int | None = None) -> tuple[list[Feedback], list[dict]]:
    """Labels with the server's ``id``, ``user`` (the key's hash) and ``created_at``."""
    labels, errors, now = [], [], time.time()
    for i, item, err in split_items(body, max_items):
        try:
            if err:
                raise ValueError(err)
            if not isinstance(item, dict):
                raise ValueError(f"expected a JSON object, got {type(item).__name__}")
            unknown = sorted(set(item) - FEEDBACK_FIELDS)
            if unknown:
                raise ValueError(f"unknown field(s) {', '.join(map(str, unknown))[:200]} (the server sets id, "
                                 f"user and created_at); accepted: {', '.join(sorted(FEEDBACK_FIELDS))}")
            fb = msgspec.convert({**item, "id": "-", "user": key, "created_at": now}, Feedback)
        except (ValueError, TypeError, RecursionError, msgspec.ValidationError) as exc:
            errors.append({"index": i, "reason": _reason(exc)})
            continue
        labels.append(msgspec.structs.replace(fb, id=feedback_id(fb.prompt_id, fb.kind, fb.value, fb.candidate_id,
                                                                 fb.response_id, fb.other_id, fb.user)))
    return labels, errors


def refusal(items: int, errors: list[dict]) -> dict:
    """The 422 body: at most ``MAX_ERRORS`` errors listed, how many more in ``more_errors``."""
    detail = (f"{len(errors)} of {items} items are invalid; nothing was published (batches are "
              f"all-or-nothing)") if items else "the body holds no items"
    body: dict[str, Any] = {"detail": detail, "errors": errors[:MAX_ERRORS]}
    if len(errors) > MAX_ERRORS:
        body["more_errors"] = len(errors) - MAX_ERRORS
    return body
