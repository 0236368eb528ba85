import asyncio
import time

import pytest

from agents.backends.breaker import CircuitBreaker, CircuitOpen


def test_opens_after_threshold_then_probe_closes_it():
    async def go():
        b = CircuitBreaker("s", threshold=2, cooldown_s=0.05)
        far = time.monotonic() + 10
        assert await b.admit(far) is False
        b.failure(False)
        assert b.state == "closed"
        b.failure(False)
        assert b.state == "open"
        started = time.monotonic()
        probe = await b.admit(far)  # waits out the cool-down, then goes as the probe
        assert probe is True and time.monotonic() - started >= 0.04
        # a second request waits while the probe is out
        waiter = asyncio.create_task(b.admit(far))
        await asyncio.sleep(0.02)
        assert not waiter.done()
        b.success(True)
        assert b.state == "closed" and await waiter is False

    asyncio.run(go())


def test_failed_probe_doubles_cooldown_and_budget_gives_up():
    async def go():
        b = CircuitBreaker("s", threshold=1, cooldown_s=0.05)
        b.failure(False)
        probe = await b.admit(time.monotonic() + 10)
        b.failure(probe)
        assert b.cooldown == pytest.approx(0.1) and b.state == "open"
        with pytest.raises(CircuitOpen):
            await b.admit(time.monotonic() + 0.01)

    asyncio.run(go())
