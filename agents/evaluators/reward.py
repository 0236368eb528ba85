"""The reward-model evaluator: a client for a vLLM server running a reward (or other pooling)
model, speaking vLLM's documented request and response shapes.

``params`` (the objective's ``evaluation.evaluators`` entry for ``reward``):

``base_url`` (required)  the server, e.g. ``http://rm:8000``
``model``                sent as ``model`` (vLLM checks it against the served name)
``endpoint``             which API, one request per candidate set where it batches:

* ``pooling`` (default): ``POST /pooling``. ``input: text`` (default) sends every candidate in
  one request, ``{"model", "input": [text, ...]}``, each text rendered with ``template``
  (default ``"{prompt}\\n\\n{response}"``); ``input: chat`` sends one ``{"model", "messages"}``
  request per candidate, concurrently (the server's chat template applies). Each
  ``data[i].data`` is the pooled output: a list of floats (sequence reward) or a list of
  per-token lists (token rewards: the last token's is taken); ``label_index`` picks the value
  (default -1, the last).
* ``classify``: ``POST /classify``, same inputs; ``data[i].probs`` (or ``probabilities`` /
  ``logits``) ``[label_index]``.
* ``score`` / ``v1/score``: ``{"model", "text_1": prompt, "text_2": [response, ...]}`` →
  ``data[i].score`` (cross-encoder or reward models served for scoring).
* ``rerank`` / ``v1/rerank``: ``{"model", "query": prompt, "documents": [...], "top_n": N}`` →
  ``results[j].relevance_score`` for ``results[j].index``.

``normalise``  ``sigmoid`` (default, ``sigmoid(raw / scale)``, comparable across sets),
``minmax`` (within the set; a set of equal rewards gets 0.5) or ``none`` (raw clipped to [0, 1]).
``timeout_s`` (30), ``retries`` (2, with back-off; a 4xx is not retried).

``raw`` keeps the reward exactly as the server gave it. A server that fails after the retries
leaves the set unscored (``error`` says why), never guessed.
"""
from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import httpx

from agents.evaluators.base import params_of
from agents.evaluators.judge import request_text
from schemas import Candidate, ObjectiveSpec, Prompt, Score
from streams.endpoints import Endpoints
from streams.settings import Settings

log = logging.getLogger(__name__)

ENDPOINTS = ("pooling", "classify", "score", "v1/score", "rerank", "v1/rerank")
NORMALISERS = ("sigmoid", "minmax", "none")
DEFAULT_TEMPLATE = "{prompt}\n\n{response}"


class RewardError(RuntimeError):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def check_params(params: dict) -> list[str]:
    """Why ``params`` cannot drive the reward client, or ``[]``."""
    out = []
    if not params.get("base_url"):
        out.append("reward needs params.base_url (the vLLM server, e.g. http://127.0.0.1:8000)")
    if params.get("endpoint", "pooling") not in ENDPOINTS:
        out.append(f"reward params.endpoint must be one of {list(ENDPOINTS)}")
    if params.get("normalise", "sigmoid") not in NORMALISERS:
        out.append(f"reward params.normalise must be one of {list(NORMALISERS)}")
    if params.get("input", "text") not in ("text", "chat"):
        out.append("reward params.input must be text or chat")
    return out


def _pick(values: Any, index: int) -> float:
    if isinstance(values, (int, float)):
        return float(values)
    if values and isinstance(values[0], list):  # token-level output: the last token's row
        values = values[-1]
    return float(values[index])


def _sorted_data(body: dict, key: str = "data") -> list[dict]:
    return sorted(body[key], key=lambda d: d["index"])


def parse_rewards(endpoint: str, body: dict, count: int, label_index: int) -> list[float]:
    """The raw reward per candidate, in order, from a vLLM response body."""
    if endpoint == "pooling":
        rewards = [_pick(d["data"], label_index) for d in _sorted_data(body)]
    elif endpoint == "classify":
        rewards = [_pick(d.get("probs", d.get("probabilities") or d.get("logits")), label_index)
                   for d in _sorted_data(body)]
    elif endpoint in ("score", "v1/score"):
        rewards = [float(d["score"]) for d in _sorted_data(body)]
    else:
        by_index = {r["index"]: float(r["relevance_score"]) for r in body["results"]}
        rewards = [by_index[i] for i in range(count)]
    if len(rewards) != count:
        raise ValueError(f"{len(rewards)} rewards for {count} candidates")
    if not all(math.isfinite(r) for r in rewards):
        raise ValueError(f"non-finite reward in {rewards}")
    return rewards


def normalise(rewards: list[float], how: str, scale: float = 1.0) -> list[float]:
    if how == "minmax":
        lo, hi = min(rewards), max(rewards)
        return [0.5 if hi == lo else (r - lo) / (hi - lo) for r in rewards]
    if how == "none":
        return [min(1.0, max(0.0, r)) for r in rewards]
    return [1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, r / scale)))) for r in rewards]


class RewardModel:
    """``settings`` decides which servers ``params.base_url`` may name (``streams.endpoints``);
    without settings none is allowed. No API key is ever sent."""

    name = "reward"
    kind = "reward"

    def __init__(self, settings: Settings | None = None) -> None:
        self.endpoints = Endpoints(settings or Settings())

    def applies(self, prompt: Prompt) -> bool:
        return True

    def bodies(self, prompt: Prompt, texts: list[str], p: dict) -> list[dict]:
        """The request bodies for one candidate set."""
        endpoint, model, request = p.get("endpoint", "pooling"), p.get("model"), request_text(prompt)
        head = {"model": model} if model else {}
        if endpoint in ("score", "v1/score"):
            return [{**head, "text_1": request, "text_2": texts}]
        if endpoint in ("rerank", "v1/rerank"):
            return [{**head, "query": request, "documents": texts, "top_n": len(texts)}]
        if p.get("input", "text") == "chat":
            turns = [{"role": m.role, "content": m.content or ""} for m in prompt.messages]
            return [{**head, "messages": [*turns, {"role": "assistant", "content": t}]} for t in texts]
        template = p.get("template", DEFAULT_TEMPLATE)
        return [{**head, "input": [template.format(prompt=request, response=t) for t in texts]}]

    async def _post(self, client: httpx.AsyncClient, url: str, body: dict, retries: int) -> dict:
        for attempt in range(retries + 1):
            try:
                resp = await client.post(url, json=body)
                if resp.status_code >= 400:
                    raise RewardError(f"HTTP {resp.status_code} from {url}: {resp.text[:200]}",
                                      retryable=resp.status_code >= 500 or resp.status_code == 429)
                return resp.json()
            except (httpx.HTTPError, RewardError) as e:
                retryable = getattr(e, "retryable", True)
                if not retryable or attempt == retries:
                    raise RewardError(str(e) or type(e).__name__, retryable) from None
                await asyncio.sleep(0.2 * 2 ** attempt)
        raise AssertionError("unreachable")

    async def rewards(self, prompt: Prompt, texts: list[str], p: dict) -> list[float]:
        endpoint = p.get("endpoint", "pooling")
        url = f"{str(p['base_url']).rstrip('/')}/{endpoint}"
        label_index, retries = int(p.get("label_index", -1)), int(p.get("retries", 2))
        async with httpx.AsyncClient(timeout=float(p.get("timeout_s", 30.0))) as client:
            bodies = self.bodies(prompt, texts, p)
            replies = await asyncio.gather(*(self._post(client, url, b, retries) for b in bodies))
        if len(replies) == 1:
            return parse_rewards(endpoint, replies[0], len(texts), label_index)
        return [parse_rewards(endpoint, r, 1, label_index)[0] for r in replies]

    async def score(self, prompt: Prompt, candidates: list[Candidate],
                    objective: ObjectiveSpec) -> list[Score]:
        p = params_of(objective, self.name)
        problems = check_params(p)
        if not problems:
            blocked = self.endpoints.problem(str(p["base_url"]), "reward params.base_url")
            problems = [blocked] if blocked else []
        if problems:
            return [self._none("; ".join(problems)) for _ in candidates]
        try:
            raw = await self.rewards(prompt, [c.text for c in candidates], p)
        except RewardError as e:
            if e.retryable:  # the server down past its retries: the stage blocks, nothing is scored
                raise
            log.warning("reward model failed: %s", e)
            return [self._none(f"reward_error: {e}") for _ in candidates]
        except (KeyError, TypeError, ValueError, IndexError) as e:
            log.warning("reward model failed: %s", e)
            return [self._none(f"reward_error: {e}") for _ in candidates]
        how = p.get("normalise", "sigmoid")
        values = normalise(raw, how, float(p.get("scale", 1.0)))
        where = p.get("endpoint", "pooling")
        return [Score(evaluator=self.name, kind=self.kind, value=v, raw=r,
                      rationale=f"reward {r:.4g} from /{where}, {how}-normalised")
                for v, r in zip(values, raw)]

    def _none(self, error: str) -> Score:
        return Score(evaluator=self.name, kind=self.kind, value=None, error=error[:300])
