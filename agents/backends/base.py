"""The one async interface every model backend speaks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from schemas import Message


@dataclass(frozen=True)
class GenRequest:
    """Exactly one of ``messages`` (chat, the model's chat template) or ``prompt`` (raw
    completion text) is set."""

    messages: list[Message] | None = None
    prompt: str | None = None
    n: int = 1
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 128
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    # structured output the backend enforces where it can: a GBNF grammar (llama.cpp; an
    # OpenAI-compatible llama.cpp or vLLM server) and/or a JSON schema (``response_format``)
    grammar: str | None = None
    json_schema: dict | None = None
    # the start of ``prompt`` that other requests share (a judge's rubric and question): a
    # backend may keep its evaluation and start each such request from it
    prefix: str | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("GenRequest needs exactly one of messages= or prompt=")


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    seed: int | None = None


class BackendError(Exception):
    """A model call failed. ``retryable`` is False for errors a retry cannot fix (a 4xx:
    bad request, auth, unknown model); those go to the dead-letter topic at once."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class Generator(Protocol):
    backend: str  # "llamacpp" | "openai" | "vllm"
    model: str

    async def generate(self, req: GenRequest) -> list[Generation]:
        """``req.n`` generations (seeds ``seed``, ``seed+1``, … where a seed is given).
        Raises ``BackendError`` once retries are spent."""
        ...

    async def close(self) -> None: ...
