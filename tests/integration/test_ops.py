"""Operating it, against a real broker and real worker processes: /metrics scraped during a
pipeline run agrees with the run's summary, `prefstream status --json` describes the live
run, dead letters can be listed, shown and replayed after the fix (twice, safely), and the
compose file's agent services run the pipeline as written.

The echo backend with ``max_tokens=2`` writes "Candidate 0", "Candidate 1", …; the math
verifier reads the last number, so a reference answer of "0" makes candidate 0 the only
correct one (a pair) and "7" makes them all wrong (a tie: no pair)."""
from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import httpx
import msgspec
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from schemas import (EvaluationSpec, EvaluatorSpec, GeneratorSpec, Message, ObjectiveSpec, Prompt, SynthesisSpec,
                     Verification)
from streams.admin import create_topics, producer, reader
from streams.app import consumer_group
from streams.broker import free_port
from streams.commands.cli import main
from streams.commands.run import drive, publish_objective, summary
from streams.settings import load
from streams.commands.tap.follow import JsonlSink
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


def cli(s, *args: str, process: bool = False) -> subprocess.CompletedProcess:
    """`prefstream ARGS` with ``s`` in the environment: in this process (the CLI's imports
    cost seconds per process on a busy machine), or as a real process."""
    if process:
        return subprocess.run([sys.executable, "-m", "streams.commands.cli", *args], cwd=ROOT, env=settings_env(s),
                              capture_output=True, text=True, timeout=120)
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, settings_env(s)), redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


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


def test_status_reads_the_true_end_where_the_broker_reports_the_last_batch_start(broker, namespace):
    """3 single-record batches, then one batch of 7: the end is 10 whatever the broker
    reports (Tansu says 4: the last batch's first offset + 1)."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from streams.commands.reports.status import open_consumer, read_all, read_ends, records_since

    s = load({}, broker=broker.address, namespace=namespace)
    name = f"{namespace}.batches"

    async def go():
        admin = AIOKafkaAdminClient(bootstrap_servers=s.brokers)
        await admin.start()
        await admin.create_topics([NewTopic(name, 1, 1)])
        await admin.close()
        p = producer(s.replace(producer_linger_ms=200))
        await p.start()
        for i in range(3):
            await p.send_and_wait(name, b"single %d" % i, partition=0)
        futures = [await p.send(name, b"batched %d" % i, partition=0) for i in range(7)]
        await p.flush()
        offsets = [(await f).offset for f in futures]
        await p.stop()
        consumer = await open_consumer(s)
        try:
            tp = TopicPartition(name, 0)
            ends = await read_ends(consumer, [tp])
            values = [m.value async for m in read_all(consumer, ends)]
            recent = await records_since(consumer, tp, ends[tp], int((time.time() - 60) * 1000))
            none = await records_since(consumer, tp, ends[tp], int((time.time() + 60) * 1000))
        finally:
            await consumer.stop()
        return offsets, ends[tp], values, recent, none

    offsets, e, values, recent, none = asyncio.run(go())
    assert offsets == list(range(3, 10))
    assert (e.begin, e.end) == (0, 10) and e.reported <= e.end
    assert values == [b"single %d" % i for i in range(3)] + [b"batched %d" % i for i in range(7)]
    assert (recent, none) == (10, 0)
    print(f"reported end {e.reported}, read end {e.end}")


def test_the_compose_agent_services_run_the_pipeline(broker, namespace, tmp_path):
    """deploy/compose.yaml's agent services, as written (command and environment) except for
    the broker, namespace, ports, partitions and idempotence (Tansu has no InitProducerId):
    four workers in four consumer groups carry prompts to records, each exports only its own
    agent's metrics, and every line they log is JSON."""
    services = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    agents = {n: svc for n, svc in services.items() if svc.get("command", [""])[0] == "worker"}
    s = load({}, broker=broker.address, namespace=namespace, partitions=2, data_dir=str(tmp_path / "data"))
    topics = from_settings(s)
    asyncio.run(create_topics(s, topics))
    asyncio.run(publish_objective(s, topics, OBJ))
    procs, ports = {}, {}
    try:
        for name, svc in agents.items():
            cmd = list(svc["command"])
            ports[name] = free_port()
            cmd[cmd.index("--metrics-port") + 1] = str(ports[name])
            env = {**os.environ, **{k: str(v) for k, v in svc["environment"].items()},
                   "PREFSTREAM_BROKER": broker.address, "PREFSTREAM_NAMESPACE": namespace,
                   "PREFSTREAM_PARTITIONS": "2", "PREFSTREAM_ENABLE_IDEMPOTENCE": "false",
                   "PREFSTREAM_METRICS_HOST": "127.0.0.1", "PREFSTREAM_DATA_DIR": str(tmp_path / name),
                   "PREFSTREAM_GROUP": f"{namespace}-{svc['environment']['PREFSTREAM_GROUP']}"}
            log = (tmp_path / f"{name}.log").open("wb")
            procs[name] = subprocess.Popen([sys.executable, "-m", "streams.commands.cli", *cmd], cwd=ROOT, env=env,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            procs[name].log_path = log.name
        prompts = [prompt(i, "0") for i in range(3)] + [prompt(3, "7")]
        sink = JsonlSink(tmp_path / "out")
        try:
            ledger = asyncio.run(asyncio.wait_for(drive(s, topics, prompts, sink, [], progress=False), 180))
        finally:
            sink.close()
        result = summary(ledger, prompts, OBJ, 1.0)
        assert (result["pairs"], result["no_pair"], result["dead_letters"]) == (3, 1, 0), result
        for name, proc in procs.items():
            m = wait_for_metrics(ports[name], proc)
            own = value(m, "prefstream_messages_in_total", agent=name)
            assert own == len(prompts) == value(m, "prefstream_messages_in_total"), (name, m)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    for name, proc in procs.items():
        lines = [ln for ln in Path(proc.log_path).read_text().splitlines() if ln.strip()]
        assert lines, name
        for ln in lines:
            assert isinstance(json.loads(ln), dict), f"{name} logged a line that is not JSON: {ln!r}"


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
            ledger = asyncio.run(drive(s, topics, prompts, sink, [worker], progress=False))
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
    cmd = [sys.executable, "-m", "streams.commands.cli", "run", "--input", str(tmp_path / "in.jsonl"), "--objective",
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
    asyncio.run(publish_objective(settings, topics, OBJ))  # objectives exist, not the one the prompts name
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
        replayed = cli(settings, "deadletters", "replay", "--stage", "curate", "--error-type", "Rejected",
                       process=True)
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
    # each stage reads in a group of its own (the batch runtime): <group>.<stage>
    sources = {"curate": "prompts", "synthesize": "curated", "evaluate": "candidates", "instantiate": "judgments"}
    groups = {consumer_group(s, agent): f"{s.namespace}.{short}" for agent, short in sources.items()}
    deadline = time.monotonic() + 30
    while True:  # stages commit every half second; lag reaches 0 once they have
        proc = cli(s, "status", "--json")
        assert proc.returncode == 0, proc.stderr
        st = json.loads(proc.stdout)
        lag = {g["group"]: g["lag"] for g in st["groups"]}
        if all(lag.get(g) == 0 for g in groups) or time.monotonic() > deadline:
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
    for name, topic in groups.items():
        [group] = [g for g in st["groups"] if g["group"] == name]
        assert group["lag"] == 0 and set(group["topics"]) == {topic}, group
    dl = st["deadletters"]
    assert dl["count"] == summ["dead_letters"] + 1
    assert dl["by_reason"] == {"curate Rejected": 2, "curate DecodeError": 1}
    reasons = " ".join(d["error"] for d in dl["newest"])
    assert "prompt has no messages" in reasons and "unknown objective 'nobody-published-this'" in reasons
    assert [(o["ref"], o["status"]) for o in st["objectives"]] == [("ops@3", "active")]
    assert st["objectives"][0]["generators"] == ["echo:echo"]
    text = cli(s, "status", process=True)  # the terminal view renders the same facts
    assert text.returncode == 0 and "ops@3" in text.stdout and "curate Rejected: 2" in text.stdout


def test_sigterm_to_run_stops_its_workers_and_embedded_broker(tmp_path):
    """`kill PID` (what systemd, a CI timeout or `docker stop` sends) to `prefstream run` leaves no
    worker or broker behind: the run's own cleanup runs, as on ^C."""
    import psutil

    from tests.integration.test_blocked import _until

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: synthesize blocks (backend_down) and the run waits
    spec = ObjectiveSpec(name="default", version=1, synthesis=SynthesisSpec(candidates=2, generators=[
        GeneratorSpec(backend="openai", model="m", base_url=down)]),
        evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]))
    (tmp_path / "obj.yaml").write_text(yaml.safe_dump(msgspec.to_builtins(spec)))
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "What is 1 + 1?", "answer": "2"}) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFSTREAM_")}
    env.update(PREFSTREAM_ALLOWED_ENDPOINTS=down)
    cmd = [sys.executable, "-m", "streams.commands.cli", "run", "--input", str(tmp_path / "in.jsonl"), "--objective",
           str(tmp_path / "obj.yaml"), "--out", str(tmp_path / "out"), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def started():
        """the run's embedded broker and worker are up (its descendants), the worker logging: it
        has read its settings, so the run has started it and is past starting workers"""
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        kids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        log = tmp_path / "out" / "worker.log"
        return len(kids) >= 2 and log.is_file() and log.stat().st_size > 0 and kids

    kids: list[int] = []
    try:
        kids = _until(started, timeout=120, every=0.2)
        proc.terminate()
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 128 + 15, out[-2000:]
        alive = [p for p in kids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert alive == [], [psutil.Process(p).cmdline() for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in kids:
            try:
                psutil.Process(p).kill()
            except psutil.Error:
                pass
