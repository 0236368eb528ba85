"""Deliberately degraded responses (West-of-N / self-taught-evaluator negatives).

Pure text functions: each returns the degraded text, or None where it does not apply, so the
caller can fall back to the next perturbation.
"""
from __future__ import annotations

import re

from schemas import Prompt

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def wrong_answer(text: str, prompt: Prompt) -> str | None:
    """Change the final number (the answer a math verifier reads) to a wrong one."""
    v = prompt.verification
    if v is None or v.kind != "math":
        return None
    matches = list(_NUMBER.finditer(text))
    if not matches:
        ref = (v.answer or "0").replace(",", "")
        try:
            wrong = str(int(float(ref)) + 1)
        except ValueError:
            return None
        return f"{text.rstrip()}\n#### {wrong}"
    last = matches[-1]
    try:
        value = float(last.group().replace(",", ""))
    except ValueError:
        return None
    wrong = value + 1 if value == int(value) else value * 2 + 1
    wrong_s = str(int(wrong)) if wrong == int(wrong) else str(wrong)
    return text[: last.start()] + wrong_s + text[last.end():]


_BREAKERS = {
    "punctuation:no_comma": lambda t, kw: t.replace(" ", ", ", 1) if " " in t else None,
    "change_case:english_lowercase": lambda t, kw: t.upper() if t.lower() == t else None,
    "change_case:english_capital": lambda t, kw: t.lower() if t.upper() == t else None,
    "startend:quotation": lambda t, kw: t.strip().strip('"') or None,
    "startend:end_checker": lambda t, kw: t.replace(kw.get("end_phrase", "\0"), "").rstrip() + " Done.",
    "keywords:existence": lambda t, kw: _drop_words(t, kw.get("keywords", [])),
    "keywords:forbidden_words": lambda t, kw: f"{t} {' '.join(kw.get('forbidden_words', []))}".strip(),
}


def _drop_words(text: str, words: list[str]) -> str | None:
    out = text
    for w in words:
        out = re.sub(re.escape(w), "", out, flags=re.I)
    return out if out != text else None


def drop_constraint(text: str, prompt: Prompt) -> str | None:
    """Break the first IFEval-style constraint we know how to break."""
    v = prompt.verification
    if v is None or v.kind != "ifeval":
        return None
    for iid, kw in zip(v.instruction_id_list, v.kwargs):
        breaker = _BREAKERS.get(iid)
        if breaker:
            out = breaker(text, kw or {})
            if out is not None and out != text:
                return out
    return None


def truncate(text: str, prompt: Prompt) -> str | None:
    """Cut the response off halfway (at a word boundary)."""
    words = text.split()
    if len(words) < 2:
        return None
    return " ".join(words[: len(words) // 2])


PERTURBATIONS = {"wrong_answer": wrong_answer, "drop_constraint": drop_constraint, "truncate": truncate}


def perturb(text: str, prompt: Prompt, order: list[str]) -> tuple[str, str] | None:
    """The first perturbation in ``order`` that applies: (name, degraded text)."""
    for name in order:
        out = PERTURBATIONS[name](text, prompt)
        if out is not None and out.strip() != text.strip():
            return name, out
    return None
