"""Any OpenAI-compatible server: ``vllm serve``, ``python -m llama_cpp.server``, SGLang,
hosted APIs.

Retries: timeouts, connection errors, HTTP 429 and 5xx are retried with exponential back-off
and full jitter; ``settings.retries`` is the total number of attempts per HTTP request. Any
other 4xx fails at once (``retryable=False``) with the server's error text.

Seeds: a request asks for ``n`` choices with seed ``s``; choice ``j`` is labelled ``s + j``.
Servers that ignore ``n`` (llama.cpp's) return fewer choices; the rest are asked for with the
seed advanced past the labels already used, so every generation carries a distinct seed.
Once a server has answered with fewer choices than asked, this generator asks it for the
choices of a request as that many one-choice requests at once (choice ``j`` with seed
``s + j``), so a candidate set's generations run side by side on the server, not one after
another.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import httpx
import msgspec

from agents.backends.base import BackendError, GenRequest, Generation
from agents.backends.breaker import CircuitBreaker, CircuitOpen
from streams.settings import Settings

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
ERROR_TEXT_CHARS = 500


def normalise_base_url(base_url: str) -> str:
    """``http://host:8000``, ``http://host:8000/`` and ``http://host:8000/v1`` all become
    ``http://host:8000``; request paths add ``/v1/...`` themselves."""
    url = base_url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"base URL {base_url!r} must start with http:// or https://")
    return url


def backoff_delay(attempt: int, base_s: float) -> float:
    """Full jitter: uniform in [0, base * 2**attempt], capped."""
    return random.uniform(0.0, min(MAX_BACKOFF_S, base_s * (2 ** attempt)))


class OpenAIGenerator:
    backend = "openai"

    def __init__(self, settings: Settings, model: str, base_url: str,
                 api_key: str | None = None) -> None:
        self.model = model
        self.base_url = normalise_base_url(base_url)
        self._attempts = max(1, settings.retries)
        self._backoff_s = settings.backoff_s
        self._sem = asyncio.Semaphore(max(1, settings.max_inflight))
        self._budget_s = settings.outage_budget_s
        self.ignores_n = False  # the server answered fewer choices than asked: ask one per request
        self.schema_form = "json_schema"  # or "json_object": llama-cpp-python's server (see _response_format)
        self.breaker = CircuitBreaker(f"{model}@{self.base_url}", settings.breaker_threshold,
                                      settings.breaker_cooldown_s)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(settings.request_timeout_s),
        )

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIGenerator(model={self.model!r}, base_url={self.base_url!r})"

    async def generate(self, req: GenRequest) -> list[Generation]:
        out: list[Generation] = []
        seed = req.seed
        while len(out) < req.n:
            want = req.n - len(out)
            if self.ignores_n and want > 1:
                out += await self._one_each(req, want, seed)
                break
            gens = await self._ask(req, want, seed)
            if len(gens) < want and not self.ignores_n:
                self.ignores_n = True
                log.info("model %s at %s answers one choice per request; asking for several at once",
                         self.model, self.base_url)
            out.extend(gens[:want])
            if seed is not None:
                seed += len(gens)
        return out

    async def _ask(self, req: GenRequest, n: int, seed: int | None) -> list[Generation]:
        chat = req.messages is not None
        path = "/v1/chat/completions" if chat else "/v1/completions"
        started = time.perf_counter()
        data = await self._post(path, self._body(req, n, seed))
        gens = _parse(data, chat, seed, time.perf_counter() - started)
        if not gens:
            raise BackendError(f"{self.base_url}{path} returned no choices", retryable=True)
        return gens

    async def _one_each(self, req: GenRequest, n: int, seed: int | None) -> list[Generation]:
        """``n`` one-choice requests at once, the ``j``-th with seed ``seed + j``; if one
        fails, the others are cancelled."""
        tasks = [asyncio.ensure_future(self._ask(req, 1, None if seed is None else seed + j)) for j in range(n)]
        try:
            return [gens[0] for gens in await asyncio.gather(*tasks)]
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def _body(self, req: GenRequest, n: int, seed: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "n": n, "temperature": req.temperature,
            "top_p": req.top_p, "max_tokens": req.max_tokens,
        }
        if req.messages is not None:
            body["messages"] = msgspec.to_builtins(req.messages)
        else:
            body["prompt"] = req.prompt
        if seed is not None:
            body["seed"] = seed
        if req.stop:
            body["stop"] = list(req.stop)
        if req.json_schema is not None:
            body["response_format"] = self._response_format(req.json_schema)
        elif req.grammar is not None:  # GBNF: llama.cpp's server reads `grammar`, vLLM `guided_grammar`
            body["grammar"] = req.grammar
            body["guided_grammar"] = req.grammar
        return body

    def _response_format(self, schema: dict) -> dict[str, Any]:
        """OpenAI's and vLLM's form, or llama-cpp-python's server's (``json_object`` with a
        ``schema``; it refuses ``json_schema``) once this server has refused the first."""
        if self.schema_form == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        return {"type": "json_object", "schema": schema}

    def _refused_schema_form(self, resp: httpx.Response, body: dict[str, Any]) -> bool:
        """The server refused the ``json_schema`` response format: switch to the other form
        (for this request and every later one) and say so; the request is tried again."""
        fmt = body.get("response_format") or {}
        if fmt.get("type") != "json_schema" or "response_format" not in resp.text:
            return False
        self.schema_form = "json_object"
        body["response_format"] = self._response_format(fmt["json_schema"]["schema"])
        log.info("model %s at %s refuses response_format json_schema; sending json_object with the schema",
                 self.model, self.base_url)
        return True

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One logical request: retried on transient failures (waiting, with every other
        request to this server, while its circuit is open), then ``BackendError``."""
        last = ""
        deadline = time.monotonic() + self._budget_s
        attempt = 0
        while attempt < self._attempts:
            if attempt:
                await asyncio.sleep(backoff_delay(attempt - 1, self._backoff_s))
            try:
                probe = await self.breaker.admit(deadline)
            except CircuitOpen as exc:
                raise BackendError(f"{self.base_url}{path}: {exc}; last error: {last}", retryable=True) from None
            try:
                async with self._sem:
                    resp = await self._client.post(path, json=body)
            except httpx.TransportError as exc:  # timeouts and connection errors
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code >= 400 and self._refused_schema_form(resp, body):
                    self.breaker.success(probe)  # the server is up; it wants the other form
                    continue
                if resp.status_code == 429 or resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}: {resp.text[:ERROR_TEXT_CHARS]}"
                elif resp.status_code >= 400:
                    self.breaker.success(probe)  # the server is up; the request is wrong
                    raise BackendError(
                        f"{self.base_url}{path} rejected the request (HTTP {resp.status_code}): "
                        f"{resp.text[:ERROR_TEXT_CHARS]}",
                        retryable=False, status=resp.status_code,
                    )
                else:
                    try:
                        data = resp.json()
                    except ValueError:
                        last = f"HTTP {resp.status_code}: response is not JSON"
                    else:
                        self.breaker.success(probe)
                        return data
            self.breaker.failure(probe)
            # while the circuit was open the request waited instead of trying: only tries count
            attempt += 1
            log.warning("model %s at %s%s: attempt %d/%d failed: %s", self.model, self.base_url,
                        path, attempt, self._attempts, last)
        raise BackendError(
            f"{self.base_url}{path}: gave up after {self._attempts} attempts: {last}",
            retryable=True,
        )

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """One plain POST to this server (with its key), no retries: the caller reads the answer
        (``agents.backends.policy`` loads LoRA adapters with it)."""
        return await self._client.post(path, json=body)

    async def close(self) -> None:
        await self._client.aclose()


def _parse(data: dict[str, Any], chat: bool, seed: int | None,
           latency_s: float) -> list[Generation]:
    choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
    usage = data.get("usage") or {}
    tokens_in = int(usage.get("prompt_tokens") or 0)
    # usage counts the whole response; split completion tokens evenly across its choices
    shares = _split(int(usage.get("completion_tokens") or 0), len(choices))
    gens = []
    for j, choice in enumerate(choices):
        text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        gens.append(Generation(
            text=text or "", finish_reason=choice.get("finish_reason"),
            tokens_in=tokens_in, tokens_out=shares[j], latency_s=latency_s,
            seed=None if seed is None else seed + j,
        ))
    return gens


def _split(total: int, parts: int) -> list[int]:
    if parts <= 0:
        return []
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
