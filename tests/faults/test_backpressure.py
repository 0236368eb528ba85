"""Back-pressure: with a model backend 100x slower than the prompt rate, a worker's memory
stays bounded and the backlog waits in the broker (consumer lag grows) instead.

Prompts arrive at 100/s, each with 10 KB of context; the generator is the echo backend
with a 4 s delay per call (``echo-slow-4``) and the worker runs 4 model calls at a time,
so it completes 1 prompt/s: 100x less than arrives. Over 30 s, 3,000 prompts (30 MB of
prompt text, more as Python objects) arrive; a worker that buffered them would grow by
that much. Broker: Tansu (memory storage), the session's.
"""
from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from schemas import EvaluationSpec, EvaluatorSpec, GeneratorSpec, ObjectiveSpec, SynthesisSpec
from streams.admin import create_topics
from streams.commands.run import publish_objective
from streams.topics import from_settings
from tests.faults.harness import Ledger, math_prompts, rss_mb, send_prompts

pytestmark = pytest.mark.faults

RATE = 100.0  # prompts per second
SECONDS = 30.0
DELAY_S = 4.0  # per model call; 4 calls in flight → 1 prompt/s
PAD = 10_000  # characters of context per prompt
# Bounded: the worker's RSS settles within seconds (5-23 MB above its start here, the
# allocator's doing) and stays flat while the backlog keeps growing. With faust's buffer
# unbounded (stream_buffer_maxsize=100000) the same run grew steadily, by 43 MB in all.
# The second half compares medians of 5 samples (around the middle, at the end): a single
# late step of 5-12 MB from the allocator (seen, once in a few runs) is not growth with lag.
SECOND_HALF_GROWTH_LIMIT_MB = 8.0  # RSS growth while the lag grows by another ~1,500 prompts
RSS_GROWTH_LIMIT_MB = 40.0  # over the whole run


def test_slow_model_grows_lag_not_memory(settings, workers):
    settings = settings.replace(max_inflight=4)
    topics = from_settings(settings)
    spec = ObjectiveSpec(name="slow", version=1,
                         synthesis=SynthesisSpec(candidates=2, generators=[GeneratorSpec(backend="echo",
                                                                                         model=f"echo-slow-{DELAY_S:g}")]),
                         evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]))
    asyncio.run(create_topics(settings, topics))
    asyncio.run(publish_objective(settings, topics, spec))
    worker = workers.start(settings, PREFSTREAM_MAX_INFLIGHT="4", PREFSTREAM_LOG_LEVEL="WARNING")
    prompts = math_prompts(int(RATE * SECONDS) + 1, spec.name, prefix="bp", pad=PAD)
    samples: list[tuple[float, float, int, int]] = []  # (t, rss MB, prompts acked, candidate sets)

    async def scenario() -> None:
        ledger = Ledger(topics, extra=("candidates",))
        # warm-up: one prompt through every stage, so the baseline is a running worker
        await send_prompts(settings, topics, prompts[:1])
        assert await ledger.follow(settings, lambda lg: prompts[0].id in lg.outcomes, 120), "no warm-up outcome"
        acked: list[str] = [prompts[0].id]
        stop = asyncio.Event()
        follow = asyncio.create_task(ledger.follow(settings, lambda lg: False, SECONDS + 60, stop=stop))
        started = time.monotonic()
        send = asyncio.create_task(send_prompts(settings, topics, prompts[1:], rate=RATE, acked=acked))
        while time.monotonic() - started < SECONDS + 5:
            samples.append((time.monotonic() - started, rss_mb(worker.pid), len(acked), ledger.counts["candidates"]))
            await asyncio.sleep(1.0)
        await send
        stop.set()
        await follow

    asyncio.run(scenario())
    assert worker.poll() is None, open(worker.log_path).read()[-3000:]
    base = samples[0][1]
    peak = max(s[1] for s in samples)
    t_end, rss_end, produced, candidates = samples[-1]
    mid = samples[len(samples) // 2]
    print(f"\nback-pressure (Tansu, memory storage): {produced} prompts in {SECONDS:.0f}s at {RATE:.0f}/s "
          f"(+{PAD} chars each), model {DELAY_S}s per call x 4 in flight")
    half = len(samples) // 2
    second_half = statistics.median(s[1] for s in samples[-5:]) - statistics.median(
        s[1] for s in samples[half - 2:half + 3])
    print(f"  worker RSS: start {base:.0f} MB, peak {peak:.0f} MB, end {rss_end:.0f} MB (growth {peak - base:.1f} MB, "
          f"limit {RSS_GROWTH_LIMIT_MB:.0f}; in the second half {second_half:.1f} MB, limit "
          f"{SECOND_HALF_GROWTH_LIMIT_MB:.0f})")
    print(f"  candidate sets produced: {candidates}; lag (prompts produced - candidate sets): "
          f"{mid[2] - mid[3]} at {mid[0]:.0f}s, {produced - candidates} at {t_end:.0f}s")
    print("  RSS MB each second: " + " ".join(f"{s[1]:.0f}" for s in samples))
    assert produced >= RATE * SECONDS * 0.9, "the producer did not keep its rate"
    assert candidates <= produced * 0.1, "the slow model kept up: no back-pressure was exercised"
    assert produced - candidates > (mid[2] - mid[3]) * 1.5, "consumer lag did not grow"
    assert second_half < SECOND_HALF_GROWTH_LIMIT_MB, [round(s[1]) for s in samples]
    assert peak - base < RSS_GROWTH_LIMIT_MB, [round(s[1]) for s in samples]


def test_echo_slow_model_name_sets_the_delay():
    from agents.backends.base import BackendError, GenRequest
    from agents.backends.echo import EchoGenerator

    assert EchoGenerator("echo").delay_s == 0 and EchoGenerator("echo-slow-0.25").delay_s == 0.25
    gen = EchoGenerator("echo-slow-0.2")
    started = time.monotonic()
    [out] = asyncio.run(gen.generate(GenRequest(prompt="Question: 1 + 1?", n=1, max_tokens=8)))
    assert time.monotonic() - started >= 0.2 and out.text
    for bad in ("echo-slow-", "echo-slow-x", "echo-slow--1", "echo-slow-inf"):
        with pytest.raises(BackendError, match="echo-slow-0.5"):
            EchoGenerator(bad)
