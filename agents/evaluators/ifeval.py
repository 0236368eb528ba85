"""The IFEval verifier: does a response follow the prompt's checkable instructions?

Uses Google's IFEval checkers as packaged by ``if-verifiable``. Those checkers expect NLTK's
trained ``punkt`` / ``punkt_tab`` data, which prefstream never downloads (it runs with no
network); :func:`patch_ifeval_for_offline_use` makes them run on NLTK's code alone.
"""
from __future__ import annotations

import logging
from typing import Any

import langdetect
import nltk
from if_verifiable import IFEvalSample, evaluate_output_for_sample
from if_verifiable.ifeval import instructions_util
from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
from nltk.tokenize.punkt import PunktSentenceTokenizer

from schemas import Candidate, ObjectiveSpec, Prompt, Score

log = logging.getLogger(__name__)

_SENTENCES = PunktSentenceTokenizer()  # untrained: the punkt algorithm, no data files


def _sentence_tokenizer() -> PunktSentenceTokenizer:
    return _SENTENCES


class _NltkWithoutData:
    """Stands in for the ``nltk`` module inside ``instructions_util``: ``word_tokenize``
    splits sentences with the untrained punkt tokenizer (instead of loading ``punkt_tab``)
    and then tokenises each one as nltk does; every other attribute is the real nltk's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(nltk, name)

    @staticmethod
    def word_tokenize(text: str, language: str = "english",
                      preserve_line: bool = False) -> list[str]:
        lines = [text] if preserve_line else _SENTENCES.tokenize(text)
        return [tok for line in lines for tok in nltk.word_tokenize(line, preserve_line=True)]


def patch_ifeval_for_offline_use() -> None:
    """Make the IFEval checkers work without downloaded NLTK data, once, at import.

    * ``instructions_util._get_sentence_tokenizer`` (used to count sentences) loaded the
      trained English punkt pickle; it now returns nltk's untrained ``PunktSentenceTokenizer``,
      which splits on sentence punctuation the same way for ordinary prose.
    * ``instructions_util.nltk.word_tokenize`` (used to count capitalised words) needed
      ``punkt_tab``; ``instructions_util.nltk`` is now a proxy whose ``word_tokenize``
      uses the untrained tokenizer and delegates everything else to nltk.
    * ``langdetect`` is seeded, so the language checks give the same verdict every run.

    Idempotent: a second call changes nothing.
    """
    instructions_util._get_sentence_tokenizer = _sentence_tokenizer
    if not isinstance(instructions_util.nltk, _NltkWithoutData):
        instructions_util.nltk = _NltkWithoutData()
    langdetect.DetectorFactory.seed = 0


patch_ifeval_for_offline_use()


def _user_request(prompt: Prompt) -> str:
    """The text IFEval's prompt-aware checkers compare against: the last user turn."""
    for m in reversed(prompt.messages):
        if m.role == "user" and m.content:
            return m.content
    return ""


def _rationale(results: list[Any], unknown: list[str]) -> str:
    parts = [f"{r.instruction_id}: {'pass' if r.strict_pass else 'fail'}" for r in results]
    parts += [f"{i}: unknown (skipped)" for i in unknown]
    return "; ".join(parts)


class IFEvalVerifier:
    """Scores the fraction of a prompt's IFEval instructions a response follows (strict)."""

    name = "ifeval"
    kind = "verifier"

    def applies(self, prompt: Prompt) -> bool:
        v = prompt.verification
        return v is not None and v.kind == "ifeval" and bool(v.instruction_id_list)

    def check(self, prompt: Prompt, text: str) -> Score:
        """Score one response text against the prompt's instructions."""
        v = prompt.verification
        assert v is not None
        unknown = [i for i in v.instruction_id_list if i not in INSTRUCTION_DICT]
        if len(unknown) == len(v.instruction_id_list):
            return self._none(f"no known instructions: {unknown}")
        if not text.strip():
            return Score(evaluator=self.name, kind=self.kind, value=0.0, raw=0.0,
                         rationale="empty response follows no instruction")
        sample = IFEvalSample(key=0, prompt=_user_request(prompt),
                              instruction_id_list=list(v.instruction_id_list),
                              kwargs=[dict(k) for k in v.kwargs])
        results, scores = evaluate_output_for_sample("ifeval", sample, text)
        return Score(evaluator=self.name, kind=self.kind, value=scores.partial_strict,
                     raw=scores.partial_strict, rationale=_rationale(results, unknown))

    async def score(self, prompt: Prompt, candidates: list[Candidate],
                    objective: ObjectiveSpec) -> list[Score]:
        if not self.applies(prompt):
            return [self._none("no ifeval instructions") for _ in candidates]
        return [self._safe_check(prompt, c.text) for c in candidates]

    def _safe_check(self, prompt: Prompt, text: str) -> Score:
        try:
            return self.check(prompt, text)
        except Exception as e:  # a checker bug or bad kwargs must not stop the stage
            log.exception("ifeval verification failed")
            return self._none(f"{type(e).__name__}: {e}")

    def _none(self, error: str) -> Score:
        return Score(evaluator=self.name, kind=self.kind, value=None, error=error)
