"""A zero-cost generator: N synthetic candidates at once, derived from the request and the
seed. For measuring the bus and agents without a model, and for fast agent tests."""
from __future__ import annotations

from agents.backends.base import GenRequest, Generation


class EchoGenerator:
    backend = "echo"

    def __init__(self, model: str = "echo") -> None:
        self.model = model

    async def generate(self, req: GenRequest) -> list[Generation]:
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
