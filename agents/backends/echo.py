"""A zero-cost generator: N synthetic candidates at once, derived from the request and the
seed. For measuring the bus and agents without a model, and for fast agent tests.

The model name ``echo-slow-S`` (e.g. ``echo-slow-0.5``) makes every call take S seconds: a
slow model backend, for back-pressure tests.
"""
from __future__ import annotations

import asyncio

from agents.backends.base import BackendError, GenRequest, Generation

SLOW_PREFIX = "echo-slow-"


def delay_of(model: str) -> float:
    """The per-call delay a model name asks for: ``echo-slow-0.5`` → 0.5, else 0."""
    if not model.startswith(SLOW_PREFIX):
        return 0.0
    try:
        delay = float(model[len(SLOW_PREFIX):])
    except ValueError:
        delay = -1.0
    if not 0 <= delay < float("inf"):
        raise BackendError(f"echo model {model!r}: write the delay in seconds, e.g. echo-slow-0.5",
                           retryable=False)
    return delay


class EchoGenerator:
    backend = "echo"

    def __init__(self, model: str = "echo") -> None:
        self.model = model
        self.delay_s = delay_of(model)

    async def generate(self, req: GenRequest) -> list[Generation]:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        text = req.prompt if req.prompt is not None else (req.messages[-1].content or "")
        text = text.rsplit("Question:", 1)[-1].strip()[:200]
        out = []
        for i in range(req.n):
            seed = None if req.seed is None else req.seed + i
            words = f"Candidate {i} (seed {seed}) answers: {text}".split()[: max(1, req.max_tokens)]
            out.append(Generation(text=" ".join(words), finish_reason="stop", tokens_in=len(text.split()),
                                  tokens_out=len(words), seed=seed))
        return out

    async def close(self) -> None:
        return None
