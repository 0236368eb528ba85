"""Who and how much may come in through `prefstream ingest`: ``Gate`` checks a request's API key
(only the keys' hashes are kept), a token bucket per key and the body size limit."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

from fastapi import HTTPException, Request

from streams.settings import Settings, SettingsError

ANONYMOUS = "anonymous"  # the key hash when no keys are configured


def load_keys(settings: Settings) -> frozenset[str]:
    """The API keys: ``ingest_keys`` (comma- or line-separated) plus ``ingest_keys_file`` lines."""
    raw = settings.ingest_keys or ""
    if settings.ingest_keys_file:
        path = Path(settings.ingest_keys_file)
        if not path.is_file():
            raise SettingsError(f"keys file {path} does not exist; fix PREFSTREAM_INGEST_KEYS_FILE")
        raw += "\n" + path.read_text()
    return frozenset(k.strip() for k in raw.replace(",", "\n").splitlines() if k.strip())


def key_hash(key: str) -> str:
    return "k-" + hashlib.sha256(key.encode()).hexdigest()[:16]


class RateLimiter:
    """A token bucket per key: ``rate`` requests/s, bursts of ``rate`` (at least 1); 0 = off."""

    def __init__(self, rate: float, clock=time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, max(1.0, rate), clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        return ok


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, or 413 when its declared or actual size is over ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"body of {declared} bytes is over the {max_bytes}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"body is over the {max_bytes}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


class Gate:
    """The checks every ``/v1/*`` request passes before its body is read."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = {key_hash(k) for k in load_keys(settings)}  # only hashes are kept
        self.limiter = RateLimiter(settings.ingest_rate_limit)

    def authorize(self, request: Request) -> str:
        """The caller's key hash (``anonymous`` with no keys configured); 401 or 429 otherwise."""
        h = ANONYMOUS
        if self.keys:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            h = key_hash(token.strip())
            if scheme.lower() != "bearer" or h not in self.keys:
                raise HTTPException(401, "missing or wrong API key: send `Authorization: Bearer KEY`",
                                    headers={"WWW-Authenticate": "Bearer"})
        if not self.limiter.allow(h):
            raise HTTPException(429, f"over {self.settings.ingest_rate_limit:g} requests/s for this key",
                                headers={"Retry-After": "1"})
        return h

    async def body(self, request: Request) -> bytes:
        """The body (read after ``authorize``); 413 when it is over ``ingest_max_bytes``."""
        return await read_body(request, self.settings.ingest_max_bytes)
