"""The ``deadletters`` topic: a message no stage could process, with the reason."""
from __future__ import annotations

from schemas.base import Wire


class DeadLetter(Wire, tag="deadletter.v1", kw_only=True):
    stage: str
    error_type: str
    error: str
    path: str | None = None  # msgspec's error path ("$.messages[0].role") for decode errors
    original: bytes = b""
    topic: str = ""
    partition: int = -1
    offset: int = -1
    key: str | None = None
    prompt_id: str | None = None
    created_at: float = 0.0
