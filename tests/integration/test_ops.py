"""Operating it, against a real broker and real worker processes: /metrics scraped during a
pipeline run agrees with the run's summary, `prefstream status --json` describes the live
run, and dead letters can be listed, shown and replayed after the fix (twice, safely).

The echo backend with ``max_tokens=2`` writes "Candidate 0", "Candidate 1", …; the math
verifier reads the last number, so a reference answer of "0" makes candidate 0 the only
correct one (a pair) and "7" makes them all wrong (a tie: no pair)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import msgspec
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from schemas import (EvaluationSpec, EvaluatorSpec, GeneratorSpec, Message, ObjectiveSpec, Prompt, SynthesisSpec,
                     Verification)
from streams.admin import create_topics, producer, reader
from streams.broker import free_port
from streams.run import drive, publish_objective, summary
from streams.settings import load
from streams.tap import JsonlSink
from streams.topics import from_settings
from tests.conftest import ROOT, Workers, settings_env

CANDIDATES = 3
OBJ = ObjectiveSpec(
    name="ops", version=3,
    synthesis=SynthesisSpec(candidates=CANDIDATES, generators=[GeneratorSpec(backend="echo", model="echo",
                                                                             max_tokens=2)]),
    evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]),
)


def prompt(i: int, answer: str | None, objective: str = "ops", text: str = "Name the number.") -> Prompt:
    messages = [Message(role="user", content=f"{text} ({chr(97 + i)})")] if text else []
    return Prompt(id=f"p-ops-{i}", messages=messages, objective=objective,
                  verification=Verification(kind="math", answer=answer) if answer else None)


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def wait_for_metrics(port: int, proc, deadline_s: float = 60.0) -> dict:
    deadline = time.monotonic() + deadline_s
    while True:
        assert proc.poll() is None, Path(proc.log_path).read_text()[-3000:]
        try:
            return scrape(port)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def cli(s, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env=settings_env(s),
                          capture_output=True, text=True, timeout=timeout)


async def read_topic(s, topics, short: str) -> list:
    """Every record on a topic now (group-less reader; stops when a poll returns nothing)."""
    t = getattr(topics, short)
    consumer = await reader(s, [t.name])
    out = []
    try:
        while batch := await consumer.getmany(timeout_ms=1500):
            out += [t.codec.decode(m.value) for msgs in batch.values() for m in msgs]
    finally:
        await consumer.stop()
    return out


@pytest.fixture(scope="module")
def live_run(broker, tmp_path_factory):
    """One worker (all agents, /metrics on a free port) and one pipeline run through it,
    driven by the same code as `prefstream run`; the worker stays up for the tests."""
    tmp = tmp_path_factory.mktemp("ops")
    ns = "tops" + str(int(time.time() * 1000) % 10**8)
    s = load({}, broker=broker.address, namespace=ns, group=ns, partitions=2, data_dir=str(tmp / "data"))
    topics = from_settings(s)
    asyncio.run(create_topics(s, topics))
    asyncio.run(publish_objective(s, topics, OBJ))
    port = free_port()
    workers = Workers(tmp)
    worker = workers.start(s, PREFSTREAM_METRICS_PORT=str(port), PREFSTREAM_GROUP=s.group,
                           PREFSTREAM_OBJECTIVE_WAIT_S="2")
    try:
        before = wait_for_metrics(port, worker)
        prompts = ([prompt(i, "0") for i in range(4)] + [prompt(i, "7") for i in range(4, 7)]
                   + [prompt(7, None, text=""), prompt(8, "0", objective="nobody-published-this")])

        async def malformed() -> None:
            p = producer(s)
            await p.start()
            await p.send_and_wait(topics.prompts.name, b"\xffnot a prompt", key=b"junk")
            await p.stop()

        asyncio.run(malformed())
        scrapes, stop = [], threading.Event()

        def scraper() -> None:
            while not stop.wait(0.3):
                try:
                    scrapes.append(scrape(port))
                except httpx.HTTPError:
                    pass

        thread = threading.Thread(target=scraper, daemon=True)
        thread.start()
        started = time.monotonic()
        sink = JsonlSink(tmp / "out")
        try:
            ledger = asyncio.run(drive(s, topics, prompts, sink, worker, Path(worker.log_path), progress=False))
        finally:
            stop.set()
            thread.join(5)
            sink.close()
        yield {"settings": s, "topics": topics, "port": port, "worker": worker, "before": before,
               "scrapes": scrapes, "summary": summary(ledger, prompts, OBJ, time.monotonic() - started),
               "prompts": prompts}
    finally:
        workers.stop_all()


def test_run_serves_metrics_while_it_runs(settings, tmp_path):
    """`prefstream run --metrics-port P`: the run's worker is scraped while it works, and no
    scraped counter ever exceeds what summary.json says happened."""
    lines = [{"prompt": f"Name the number ({chr(97 + i)}).", "answer": str(i % 2)} for i in range(6)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    spec = msgspec.to_builtins(msgspec.structs.replace(OBJ, name="default"))
    (tmp_path / "obj.yaml").write_text(yaml.safe_dump(spec))
    port = free_port()
    cmd = [sys.executable, "-m", "streams.cli", "run", "--input", str(tmp_path / "in.jsonl"), "--objective",
           str(tmp_path / "obj.yaml"), "--out", str(tmp_path / "out"), "--quiet", "--metrics-port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=settings_env(settings), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    scrapes = []
    try:
        while proc.poll() is None:
            try:
                scrapes.append(scrape(port))
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out[-3000:]
    summ = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summ["prompts"] == 6 and summ["pairs"] + summ["no_pair"] == 6
    curate = [value(x, "prefstream_messages_in_total", agent="curate") for x in scrapes]
    assert curate and curate == sorted(curate) and curate[-1] > 0, curate
    last = scrapes[-1]
    assert value(last, "prefstream_records_total", objective="default") <= summ["pairs"]
    assert value(last, "prefstream_outcomes_total", outcome="no_pair") <= summ["no_pair"]
    assert value(last, "prefstream_model_requests_total", outcome="ok") <= summ["prompts"]


def test_dead_letters_list_show_and_replay_after_the_fix(settings, workers):
    topics = from_settings(settings)
    asyncio.run(create_topics(settings, topics))
    workers.start(settings, PREFSTREAM_OBJECTIVE_WAIT_S="1", PREFSTREAM_METRICS_PORT="0")
    late = [prompt(i, "0", objective="late") for i in range(3)]

    async def submit(values) -> None:
        p = producer(settings)
        await p.start()
        for v in values:
            await p.send_and_wait(topics.prompts.name, topics.prompts.codec.encode(v), key=v.id.encode())
        await p.stop()

    asyncio.run(submit(late))
    deadline = time.monotonic() + 90
    while True:
        listed = cli(settings, "deadletters", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        letters = [json.loads(line) for line in listed.stdout.splitlines()]
        if len(letters) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert sorted(d["prompt_id"] for d in letters) == [p.id for p in late]
    assert {(d["stage"], d["error_type"]) for d in letters} == {("curate", "Rejected")}
    assert all("unknown objective 'late'" in d["error"] for d in letters)
    assert cli(settings, "deadletters", "list", "--stage", "evaluate", "--json").stdout == ""

    shown = cli(settings, "deadletters", "show", letters[0]["ref"])
    detail = json.loads(shown.stdout)
    assert detail["ref"] == letters[0]["ref"] and topics.prompts.codec.decode(
        detail["original"].encode()).id == letters[0]["prompt_id"]
    assert cli(settings, "deadletters", "show", "9:999").returncode == 2

    # the fix: publish the objective; then replay, twice
    asyncio.run(publish_objective(settings, topics, msgspec.structs.replace(OBJ, name="late", version=1)))
    dry = cli(settings, "deadletters", "replay", "--stage", "curate", "--dry-run")
    assert "3 messages would be replayed" in dry.stdout
    for _ in range(2):
        replayed = cli(settings, "deadletters", "replay", "--stage", "curate", "--error-type", "Rejected")
        assert replayed.returncode == 0 and "replayed 3 messages" in replayed.stdout, replayed.stderr

    deadline = time.monotonic() + 90
    while True:
        outcomes = asyncio.run(read_topic(settings, topics, "outcomes"))
        if len(outcomes) >= 6 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert sorted(o.prompt_id for o in outcomes) == sorted([p.id for p in late] * 2)
    assert {o.status for o in outcomes} == {"records"}
    by_prompt: dict[str, set] = {}
    for o in outcomes:  # a replay yields the same record ids, so a sink keeps one copy
        by_prompt.setdefault(o.prompt_id, set()).add(tuple(o.record_ids))
    assert all(len(ids) == 1 for ids in by_prompt.values()), by_prompt
    records = asyncio.run(read_topic(settings, topics, "preferences"))
    assert len(records) == 6 and len({r.id for r in records}) == 3
    assert {r.objective for r in records} == {"late@1"}
    # nothing new was dead-lettered by the replays
    assert len(cli(settings, "deadletters", "list", "--json").stdout.splitlines()) == 3


def test_metrics_move_during_the_run_and_agree_with_the_summary(live_run):
    summ, port, topics, s = live_run["summary"], live_run["port"], live_run["topics"], live_run["settings"]
    assert summ["prompts"] == 9 and summ["pairs"] == 4 and summ["no_pair"] == 3 and summ["dead_letters"] == 2, summ
    assert value(live_run["before"], "prefstream_messages_in_total") == 0
    seen = [value(x, "prefstream_messages_in_total", agent="curate") for x in live_run["scrapes"]]
    assert seen and seen == sorted(seen), seen  # counters only go up while it runs

    # the counters catch up with what the broker already holds, then must match exactly
    ended = summ["pairs"] + summ["no_pair"]
    deadline = time.monotonic() + 30
    while value(m := scrape(port), "prefstream_outcomes_total") < ended and time.monotonic() < deadline:
        time.sleep(0.2)
    assert value(m, "prefstream_outcomes_total", objective="ops", outcome="records") == summ["pairs"]
    assert value(m, "prefstream_outcomes_total", objective="ops", outcome="no_pair") == summ["no_pair"]
    assert value(m, "prefstream_records_total", objective="ops", kind="pair") == summ["pairs"]
    assert value(m, "prefstream_messages_in_total", agent="curate", topic="prompts") == summ["prompts"] + 1
    # every dead letter the run counted, plus the malformed message that had no prompt id
    assert value(m, "prefstream_dead_letters_total") == summ["dead_letters"] + 1
    assert value(m, "prefstream_dead_letters_total", agent="curate", outcome="malformed") == 1
    assert value(m, "prefstream_dead_letters_total", agent="curate", outcome="rejected") == 2
    assert value(m, "prefstream_messages_out_total", agent="instantiate", topic="preferences") == summ["pairs"]
    assert value(m, "prefstream_processing_seconds_count", agent="evaluate") == ended
    assert value(m, "prefstream_objective_version", objective="ops") == OBJ.version
    assert value(m, "prefstream_evaluator_scores_total", objective="ops", evaluator="math",
                 result="scored") == summ["candidates"] == ended * CANDIDATES
    assert value(m, "prefstream_judged_candidates_total", objective="ops", overlap="no_judge") == summ["candidates"]
    # the model backend: one request per prompt that reached synthesis, tokens as the candidates say
    cands = [c for cs in asyncio.run(read_topic(s, topics, "candidates")) for c in cs.candidates]
    assert value(m, "prefstream_model_requests_total", backend="echo", model="echo", outcome="ok") == ended
    assert value(m, "prefstream_model_request_seconds_count", backend="echo", model="echo") == ended
    assert value(m, "prefstream_model_input_tokens_total", backend="echo") == sum(c.tokens_in for c in cands) > 0
    assert value(m, "prefstream_model_output_tokens_total", backend="echo") == sum(c.tokens_out for c in cands) > 0
    assert value(m, "prefstream_model_requests_in_flight") == 0
    assert value(m, "prefstream_messages_in_flight") == 0


def test_status_json_describes_the_live_run(live_run):
    s, summ = live_run["settings"], live_run["summary"]
    deadline = time.monotonic() + 60
    while True:  # faust commits offsets every few seconds; lag reaches 0 once it has
        proc = cli(s, "status", "--json")
        assert proc.returncode == 0, proc.stderr
        st = json.loads(proc.stdout)
        lag = {g["group"]: g["lag"] for g in st["groups"]}
        if lag.get(s.group) == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    topics = {t["short"]: t for t in st["topics"]}
    assert st["namespace"] == s.namespace and not st["missing_topics"]
    assert topics["prompts"]["end"] == summ["prompts"] + 1  # the malformed one too
    assert topics["preferences"]["end"] == summ["pairs"]
    assert topics["outcomes"]["end"] == summ["pairs"] + summ["no_pair"]
    assert topics["candidates"]["records"] == summ["pairs"] + summ["no_pair"]
    assert all(t["reported_end"] <= t["end"] for t in st["topics"])
    assert topics["prompts"]["partitions"] == s.partitions and topics["objectives"]["partitions"] == 1
    # every record was written within the last minute
    assert topics["prompts"]["last_minute"] == summ["prompts"] + 1
    assert topics["prompts"]["per_s"] == pytest.approx((summ["prompts"] + 1) / 60, abs=1e-3)
    [group] = [g for g in st["groups"] if g["group"] == s.group]
    assert group["lag"] == 0, group
    assert set(group["topics"]) == {t.name for t in live_run["topics"]
                                    if t.spec.short in ("prompts", "curated", "candidates", "judgments")}
    dl = st["deadletters"]
    assert dl["count"] == summ["dead_letters"] + 1
    assert dl["by_reason"] == {"curate Rejected": 2, "curate DecodeError": 1}
    reasons = " ".join(d["error"] for d in dl["newest"])
    assert "prompt has no messages" in reasons and "unknown objective 'nobody-published-this'" in reasons
    assert [(o["ref"], o["status"]) for o in st["objectives"]] == [("ops@3", "active")]
    assert st["objectives"][0]["generators"] == ["echo:echo"]
    text = cli(s, "status")  # the terminal view renders the same facts
    assert text.returncode == 0 and "ops@3" in text.stdout and "curate Rejected: 2" in text.stdout
