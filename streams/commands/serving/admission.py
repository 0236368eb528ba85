"""Who and how much may come in through `prefstream ingest`: ``Gate`` checks a request's API key
(only the keys' hashes are kept), a token bucket per key (charged per item), a bucket of failed
authentications per client address, and the body's size and read deadline."""
from __future__ import annotations

import asyncio
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
    return frozenset(_split(raw))


def key_hash(key: str) -> str:
    return "k-" + hashlib.sha256(key.encode()).hexdigest()[:16]


class RateLimiter:
    """A token bucket per key: ``rate`` tokens/s, up to ``burst`` (default ``rate``, at least 1);
    0 = off. A request needs one token; ``charge`` takes more (a batch's items) and may leave
    the bucket in debt, which the key's next requests wait out. Full buckets are forgotten
    when there are over ``MAX_BUCKETS`` (many client addresses)."""

    MAX_BUCKETS = 10_000

    def __init__(self, rate: float, clock=time.monotonic, burst: float | None = None) -> None:
        self.rate, self.clock = rate, clock
        self.burst = max(1.0, rate if burst is None else burst)
        self._buckets: dict[str, tuple[float, float]] = {}

    def tokens(self, key: str) -> float:
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def allow(self, key: str) -> bool:
        if self.rate <= 0:
            return True
        ok = self.tokens(key) >= 1.0
        if ok:
            self.charge(key, 1.0)
        return ok

    def charge(self, key: str, cost: float) -> None:
        if self.rate <= 0 or cost <= 0:
            return
        if len(self._buckets) >= self.MAX_BUCKETS and key not in self._buckets:
            self._forget_full()
        self._buckets[key] = (self.tokens(key) - cost, self.clock())

    def _forget_full(self) -> None:
        for k in [k for k in self._buckets if self.tokens(k) >= self.burst]:
            del self._buckets[k]


async def read_body(request: Request, max_bytes: int, timeout_s: float | None = None) -> bytes:
    """The body, or 413 when its declared or actual size is over ``max_bytes``, 408 when it is
    not all in within ``timeout_s``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"body of {declared} bytes is over the {max_bytes}-byte limit")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise HTTPException(413, f"body is over the {max_bytes}-byte limit")
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPException(408, f"body not received within {timeout_s:g}s", headers={"Connection": "close"}) from None
    return b"".join(chunks)


class Gate:
    """The checks every ``/v1/*`` request passes before its body is read."""

    FAIL_BURST = 10.0  # failed authentications an address may make at once

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = {key_hash(k) for k in load_keys(settings)}  # only hashes are kept
        self.verifiers = {key_hash(k) for k in _split(settings.ingest_verification_keys)}
        self.limiter = RateLimiter(settings.ingest_rate_limit)
        self.failures = RateLimiter(settings.ingest_auth_fail_rate, burst=self.FAIL_BURST)

    def authorize(self, request: Request) -> str:
        """The caller's key hash (``anonymous`` with no keys configured); 401 or 429 otherwise.
        An address past its failed-authentication budget gets 429 before its key is looked at."""
        h = ANONYMOUS
        if self.keys:
            addr = request.client.host if request.client else "unknown"
            if self.failures.rate > 0 and self.failures.tokens(addr) < 1.0:
                raise HTTPException(429, "too many failed authentications from this address; wait and retry",
                                    headers={"Retry-After": str(max(1, round(1 / self.failures.rate)))})
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            h = key_hash(token.strip())
            if scheme.lower() != "bearer" or h not in self.keys:
                self.failures.charge(addr, 1.0)
                raise HTTPException(401, "missing or wrong API key: send `Authorization: Bearer KEY`",
                                    headers={"WWW-Authenticate": "Bearer"})
        if not self.limiter.allow(h):
            raise HTTPException(429, f"over {self.settings.ingest_rate_limit:g} items/s for this key",
                                headers={"Retry-After": "1"})
        return h

    def charge(self, key: str, items: int) -> None:
        """Charge a request's items past the one ``authorize`` took."""
        self.limiter.charge(key, items - 1)

    def may_verify(self, key: str) -> bool:
        """Whether the key may send verification with prompts (``ingest_verification_keys``)."""
        return key in self.verifiers

    async def body(self, request: Request) -> bytes:
        """The body (read after ``authorize``); 413 when it is over ``ingest_max_bytes``, 408 when
        it is slower than ``ingest_body_timeout_s``."""
        return await read_body(request, self.settings.ingest_max_bytes, self.settings.ingest_body_timeout_s)


def _split(raw: str | None) -> list[str]:
    return [k.strip() for k in (raw or "").replace(",", "\n").splitlines() if k.strip()]
