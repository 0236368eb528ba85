"""The regex verifier: does the response contain (or, with ``fullmatch``, consist of) a
match of the prompt's pattern?

Patterns use the ``regex`` module's syntax (a superset of ``re``) and run with a time limit,
off the event loop (a worker thread; ``regex`` releases the GIL while it matches). A response
on which the pattern runs past the limit scores 0.0 (a response cannot dodge the verdict by
making the check slow); a pattern that does not compile, or is over ``MAX_PATTERN`` characters,
leaves every candidate unscored.
"""
from __future__ import annotations

import asyncio
import logging

import regex

from schemas import Candidate, ObjectiveSpec, Prompt, Score

log = logging.getLogger(__name__)

TIMEOUT_S = 1.0
MAX_PATTERN = 4096  # characters: a verification pattern is a line, not a program


class RegexVerifier:
    name = "regex"
    kind = "verifier"

    def applies(self, prompt: Prompt) -> bool:
        v = prompt.verification
        return v is not None and v.kind == "regex" and bool(v.pattern)

    def check(self, compiled: regex.Pattern, full: bool, text: str) -> Score:
        try:
            m = compiled.fullmatch(text.strip(), timeout=TIMEOUT_S, concurrent=True) if full else \
                compiled.search(text, timeout=TIMEOUT_S, concurrent=True)
        except TimeoutError:
            return Score(evaluator=self.name, kind=self.kind, value=0.0, raw=None,
                         rationale=f"pattern took over {TIMEOUT_S:g}s on this response")
        if m is None:
            how = "does not match as a whole" if full else "has no match"
            return Score(evaluator=self.name, kind=self.kind, value=0.0, raw=None, rationale=f"response {how}")
        return Score(evaluator=self.name, kind=self.kind, value=1.0, raw=m.group(0)[:200],
                     rationale=f"matched at {m.start()}")

    async def score(self, prompt: Prompt, candidates: list[Candidate],
                    objective: ObjectiveSpec) -> list[Score]:
        if not self.applies(prompt):
            return [self._none("no pattern") for _ in candidates]
        v = prompt.verification
        if len(v.pattern) > MAX_PATTERN:  # type: ignore[union-attr, arg-type]
            return [self._none(f"pattern is over {MAX_PATTERN} characters") for _ in candidates]
        try:
            compiled = regex.compile(v.pattern)  # type: ignore[union-attr, arg-type]
        except (regex.error, RecursionError, OverflowError) as e:
            return [self._none(f"pattern does not compile: {e}") for _ in candidates]
        texts, full = [c.text for c in candidates], v.fullmatch  # type: ignore[union-attr]
        return await asyncio.to_thread(lambda: [self.check(compiled, full, t) for t in texts])

    def _none(self, error: str) -> Score:
        return Score(evaluator=self.name, kind=self.kind, value=None, error=error)
