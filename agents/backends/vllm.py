"""In-process vLLM engine, for a worker that owns a GPU.

Written against vLLM's documented async API (``AsyncEngineArgs``,
``AsyncLLMEngine.from_engine_args``, ``SamplingParams``, ``engine.generate(prompt,
sampling_params, request_id)`` as an async iterator of ``RequestOutput``). vLLM is not a
dependency of the default install and is imported only when this backend is built.

Each of the ``n`` generations is its own engine request with seed ``seed + i``; they run
concurrently and the engine batches them, so each generation is reproducible from its seed.
Chat requests are rendered with the model's own chat template from its tokenizer.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from typing import Any

import msgspec

from agents.backends.base import BackendError, GenRequest, Generation
from streams.settings import Settings

log = logging.getLogger(__name__)

MISSING = "the vllm backend needs the 'vllm' extra: pip install 'prefstream[vllm]' on a GPU machine"


class VLLMGenerator:
    backend = "vllm"

    def __init__(self, settings: Settings, model: str, **engine_kwargs: Any) -> None:
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
        except ImportError as exc:
            raise RuntimeError(MISSING) from exc
        self.model = model
        self._sampling_params = SamplingParams
        log.info("starting vLLM engine for %s", model)
        args = AsyncEngineArgs(model=model, **engine_kwargs)
        self._engine = AsyncLLMEngine.from_engine_args(args)
        self._tokenizer: Any = None

    async def generate(self, req: GenRequest) -> list[Generation]:
        prompt = await self._prompt(req)
        seeds = [None if req.seed is None else req.seed + i for i in range(req.n)]
        runs = [self._one(prompt, req, seed) for seed in seeds]
        return list(await asyncio.gather(*runs))

    async def _prompt(self, req: GenRequest) -> str:
        if req.messages is None:
            return req.prompt or ""
        if self._tokenizer is None:
            tok = self._engine.get_tokenizer()  # a coroutine in most versions, not all
            self._tokenizer = await tok if inspect.isawaitable(tok) else tok
        return self._tokenizer.apply_chat_template(
            msgspec.to_builtins(req.messages), tokenize=False, add_generation_prompt=True)

    async def _one(self, prompt: str, req: GenRequest, seed: int | None) -> Generation:
        params = self._sampling_params(
            n=1, temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_tokens,
            seed=seed, stop=list(req.stop) or None,
        )
        started = time.perf_counter()
        final = None
        try:
            async for output in self._engine.generate(prompt, params, uuid.uuid4().hex):
                final = output
        except ValueError as exc:  # vLLM's validation errors: prompt too long, bad params
            raise BackendError(f"vLLM rejected the request: {exc}", retryable=False) from exc
        except Exception as exc:  # engine failures (e.g. the engine died) may pass
            raise BackendError(f"vLLM engine error: {exc}", retryable=True) from exc
        if final is None or not final.outputs:
            raise BackendError("vLLM returned no output", retryable=True)
        out = final.outputs[0]
        return Generation(
            text=out.text, finish_reason=out.finish_reason,
            tokens_in=len(final.prompt_token_ids or []), tokens_out=len(out.token_ids),
            latency_s=time.perf_counter() - started, seed=seed,
        )

    async def close(self) -> None:
        shutdown = getattr(self._engine, "shutdown", None)  # the v1 engine has one
        if shutdown is not None:
            result = shutdown()
            if inspect.isawaitable(result):
                await result
