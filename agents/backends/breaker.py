"""A circuit breaker shared by every request to one model server.

After ``threshold`` consecutive failures the circuit opens: requests wait (they do not hammer
a server that is down, and the agent stops pulling new work) until ``cooldown_s`` has passed;
then one probe goes through (half-open). Its success closes the circuit; its failure opens it
again with a doubled cool-down (capped). A request that has waited longer than its budget
gives up, so an outage ends as dead letters rather than a hang.
"""
from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)

MAX_COOLDOWN_S = 30.0


class CircuitOpen(Exception):
    pass


class CircuitBreaker:
    def __init__(self, name: str, threshold: int = 5, cooldown_s: float = 5.0) -> None:
        self.name, self.threshold, self.base_cooldown = name, max(1, threshold), cooldown_s
        self.failures = 0
        self.cooldown = cooldown_s
        self.opened_at: float | None = None
        self._probe = asyncio.Lock()

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "open" if time.monotonic() - self.opened_at < self.cooldown else "half-open"

    async def admit(self, deadline: float) -> bool:
        """Wait until a request may go out. Returns True when it goes as the half-open probe
        (the caller must then report success or failure). Raises CircuitOpen past ``deadline``."""
        while self.opened_at is not None:
            remaining = self.opened_at + self.cooldown - time.monotonic()
            if remaining > 0:
                if time.monotonic() + remaining > deadline:
                    raise CircuitOpen(f"{self.name}: circuit open for {remaining:.1f}s more, past the budget")
                await asyncio.sleep(remaining)
                continue
            if not self._probe.locked():
                await self._probe.acquire()
                if self.opened_at is None:  # closed while we waited for the lock
                    self._probe.release()
                    return False
                return True
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            if time.monotonic() > deadline:
                raise CircuitOpen(f"{self.name}: circuit half-open, probe still running, past the budget")
        return False

    def success(self, probe: bool) -> None:
        if self.opened_at is not None:
            log.info("%s: circuit closed", self.name)
        self.failures, self.opened_at, self.cooldown = 0, None, self.base_cooldown
        if probe and self._probe.locked():
            self._probe.release()

    def failure(self, probe: bool) -> None:
        self.failures += 1
        if probe:
            self.cooldown = min(MAX_COOLDOWN_S, self.cooldown * 2)
            self.opened_at = time.monotonic()
            self._probe.release()
            log.warning("%s: probe failed, circuit open for %.1fs", self.name, self.cooldown)
        elif self.failures >= self.threshold and self.opened_at is None:
            self.opened_at = time.monotonic()
            log.warning("%s: %d failures in a row, circuit open for %.1fs", self.name, self.failures, self.cooldown)
