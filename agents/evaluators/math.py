"""The math verifier: a response's final answer against the prompt's reference answer.

The final answer is pulled out of the response text (GSM8K's ``#### N`` line, else an
"answer is X" / "Answer: X" phrase or ``\\boxed{X}``, else the last number), then compared
with the reference by ``math-verify`` (symbolic and numeric equality, so ``1,200``,
``$1,200`` and ``1200.00`` all match ``1200``).
"""
from __future__ import annotations

import logging
import re
import threading

from math_verify import parse, verify

from schemas import Candidate, ObjectiveSpec, Prompt, Score

log = logging.getLogger(__name__)

# math-verify's own limit, in seconds, on one parse or comparison (main thread only).
TIMEOUT_S = 5

_ANSWER_PHRASE = re.compile(r"(?:answer\s+is|answer\s*:)\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\$?\s?\d[\d,]*(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


def _last_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}``, with nested braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j].strip() or None
    return None


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def extract_answer(text: str) -> str | None:
    """The response's final answer as text, or ``None`` where it states none."""
    if "####" in text:
        return _first_line(text.rsplit("####", 1)[1]) or None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    phrases = _ANSWER_PHRASE.findall(text)
    if phrases:
        phrase = _first_line(phrases[-1])
        end = _SENTENCE_END.search(phrase)
        phrase = phrase[:end.start()] if end else phrase
        if phrase.strip():
            return phrase.strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].strip().rstrip(",") if numbers else None


def _normalise(answer: str) -> str:
    """Drop thousands separators ("1,200" -> "1200") so they never read as a list."""
    return _THOUSANDS.sub("", answer.strip())


def _timeout() -> int | None:
    """math-verify's timeouts use ``signal.alarm``, which works only in the main thread;
    elsewhere they must be off (``None``) or every call raises."""
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def answers_match(reference: str, answer: str) -> bool:
    """Whether ``answer`` equals ``reference`` as mathematics (either order of forms)."""
    limit = _timeout()
    gold = parse(_normalise(reference), parsing_timeout=limit)
    pred = parse(_normalise(answer), parsing_timeout=limit)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=limit))


class MathVerifier:
    """Scores 1.0 where a response's final answer equals the reference, else 0.0."""

    name = "math"
    kind = "verifier"

    def applies(self, prompt: Prompt) -> bool:
        v = prompt.verification
        return v is not None and v.kind == "math" and bool((v.answer or "").strip())

    def check(self, reference: str, text: str) -> Score:
        """Score one response text against one reference answer."""
        answer = extract_answer(text)
        if answer is None:
            return Score(evaluator=self.name, kind=self.kind, value=0.0, raw=None,
                         rationale=f"no final answer found; reference {reference!r}")
        ok = answers_match(reference, answer)
        verdict = "matches" if ok else "does not match"
        return Score(evaluator=self.name, kind=self.kind, value=1.0 if ok else 0.0,
                     raw=answer, rationale=f"answer {answer!r} {verdict} reference {reference!r}")

    async def score(self, prompt: Prompt, candidates: list[Candidate],
                    objective: ObjectiveSpec) -> list[Score]:
        if not self.applies(prompt):
            return [Score(evaluator=self.name, kind=self.kind, value=None,
                          error="no math reference answer") for _ in candidates]
        reference = prompt.verification.answer  # type: ignore[union-attr]
        return [self._safe_check(reference, c.text) for c in candidates]

    def _safe_check(self, reference: str, text: str) -> Score:
        try:
            return self.check(reference, text)
        except Exception as e:  # a checker bug must not stop the stage
            log.exception("math verification failed")
            return Score(evaluator=self.name, kind=self.kind, value=None,
                         error=f"{type(e).__name__}: {e}")
