"""What an operator sees, against real parts: Debian's Prometheus server (started here on a
free loopback port, scraping every second, loading deploy/prometheus/alerts.yml) scrapes a
real worker on a real broker through a blocked-then-recovered episode.

The worker starts before any objective is published; prompts arrive and curate blocks
(``no_objective``): the gauge, the readiness endpoint (as the k8s readinessProbe and the
compose healthcheck ask it), the pending alert. Then the operator's fix (`prefstream
objective apply FILE`): the gauge returns to 0, the worker is ready, every prompt ends, the
alert resolves. Last, every query of the Grafana dashboard and every alert rule runs on that
Prometheus without error and returns series — except those about things this episode cannot
have, listed in ``NOT_IN_EPISODE`` with the reason (they must still evaluate).

The echo backend with ``max_tokens=2`` writes "Candidate 0", "Candidate 1", …: the math
verifier makes a reference answer of "0" a pair and "7" a tie (no pair)."""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
import pytest
import yaml

from schemas import (EvaluationSpec, EvaluatorSpec, GeneratorSpec, Message, ObjectiveSpec, Prompt, SynthesisSpec,
                     Verification)
from streams.admin import create_topics, producer
from streams.broker import free_port
from streams.topics import from_settings
from tests.conftest import ROOT, settings_env

DEPLOY = ROOT / "deploy"
PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="Prometheus is not installed "
                                "(Debian: apt-get install prometheus; .ci/run installs it)")

OBJ = ObjectiveSpec(
    name="episode", version=1,
    synthesis=SynthesisSpec(candidates=3, generators=[GeneratorSpec(backend="echo", model="echo", max_tokens=2)]),
    evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]),
)
# queries about series this episode cannot have (a substring of the query → why); each must
# still evaluate without error
NOT_IN_EPISODE = {
    "kafka_consumergroup_lag_sum": "kafka-exporter's series: compose runs kafka-exporter, this test does not",
    'figure="swap_consistency"': "needs a pairwise model judge; the episode's objective has only the math verifier",
    'figure="parse_failure_rate"': "needs a model judge; the episode's objective has only the math verifier",
    'figure="length_margin_corr"': "needs pairs of different lengths; the echo backend's candidates have one length",
    "prefstream_policy_stale_skipped_total": "served by `prefstream tap|train --metrics-port` when --max-policy-lag "
    "skips a row; the episode runs no policy (test_policies.py scrapes the tap's series)",
}
_COMPARISON = re.compile(r"\s*(?:>=|<=|==|!=|>|<)\s*-?[0-9.]+\s*$")


class Prometheus:
    """`prometheus` on 127.0.0.1:PORT with its data in ``tmp``, scraping ``targets`` every second
    and evaluating ``rule_files`` every second."""

    def __init__(self, tmp: Path, targets: list[str], rule_files: list[Path]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(p) for p in rule_files],
                  "scrape_configs": [{"job_name": "prefstream", "static_configs": [{"targets": targets}]}]}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = tmp / "prometheus.log"
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        until(lambda: self._ready(), 60, "Prometheus never became ready", self.log)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params) -> dict | list:
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert body["status"] == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str) -> list[dict]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def until(check, timeout_s: float, what: str, log: Path | None = None):
    """Poll ``check`` (every 0.25 s) until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(what + (f"\n{log.read_text()[-3000:]}" if log else ""))
        time.sleep(0.25)


def get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None


def dashboard_queries() -> list[str]:
    """Every panel query, with the dashboard's variables as Grafana fills them ("All": the
    variable's allValue) and Grafana's interval variables at values fit for a 1 s scrape."""
    dash = json.loads((DEPLOY / "grafana/dashboards/prefstream.json").read_text())
    values = {v["name"]: v.get("allValue") or ".*" for v in dash["templating"]["list"]}
    values |= {"__rate_interval": "1m", "__interval": "1s", "__range": "5m"}
    return [re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], t["expr"])
            for p in dash["panels"] for t in p.get("targets", [])]


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def measured(expr: str) -> list[str]:
    """An alert expression's aggregates, without the thresholds they are compared with (the
    rules compare at the top level only, joined by `and`)."""
    parts = [_COMPARISON.sub("", p) for p in re.split(r"\s+and\s+", expr.strip())]
    for p in parts:
        assert not re.search(r"[<>]|==|!=", p), f"a comparison inside {p!r}: compare at the top level"
    return parts


def submit(s, topics, prompts: list[Prompt], junk: bytes) -> None:
    async def go() -> None:
        p = producer(s)
        await p.start()
        try:
            for v in prompts:
                await p.send_and_wait(topics.prompts.name, topics.prompts.codec.encode(v), key=v.id.encode())
            await p.send_and_wait(topics.prompts.name, junk, key=b"junk")
        finally:
            await p.stop()

    asyncio.run(go())


def readiness(port: int) -> tuple[int, dict] | None:
    """/readyz's status and JSON body (None while the worker does not answer)."""
    r = get(f"http://127.0.0.1:{port}/readyz")
    if r is None:
        return None
    try:
        return r.status_code, r.json()
    except ValueError:
        pytest.fail(f"/readyz answered {r.status_code} without JSON: {r.text[:300]!r}")


def compose_healthcheck(port: int) -> int:
    """deploy/compose.yaml's worker healthcheck, run here against the worker's port."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    test = compose["services"]["curate"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    argv = [sys.executable] + [a.replace(":9464/", f":{port}/") for a in test[2:]]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


def test_prometheus_sees_a_blocked_stage_recover_and_every_query_returns_series(settings, workers, tmp_path):
    s = settings
    topics = from_settings(s)
    asyncio.run(create_topics(s, topics))
    port = free_port()
    prom = Prometheus(tmp_path, [f"127.0.0.1:{port}"], [DEPLOY / "prometheus/alerts.yml"])
    try:
        worker = workers.start(s, PREFSTREAM_METRICS_PORT=str(port), PREFSTREAM_OBJECTIVE_WAIT_S="1")
        log = Path(worker.log_path)
        until(lambda: worker.poll() is None and (r := get(f"http://127.0.0.1:{port}/healthz")) is not None
              and r.status_code == 200, 90, "the worker never served /healthz", log)
        prompts = [Prompt(id=f"p-prom-{i}", messages=[Message(role="user", content=f"Name the number ({i}).")],
                   objective=OBJ.name, verification=Verification(kind="math", answer="7" if i == 4 else "0"))
                   for i in range(5)]
        submit(s, topics, prompts, b"\xffnot a prompt")
        blocked_phase(prom, port, log)
        recover(prom, s, port, tmp_path, len(prompts), log)
        every_query_evaluates(prom)
    finally:
        prom.stop()


def blocked_phase(prom: Prometheus, port: int, log: Path) -> None:
    """No objective published: curate blocks, says why and how to fix it, loses nothing."""
    status, body = until(lambda: (r := readiness(port)) and r[0] == 503 and r, 90,
                         "the worker never reported curate blocked on /readyz", log)
    assert body["ready"] is False
    [b] = [b for b in body["blocked"] if b["stage"] == "curate"]
    assert b["reason"] == "no_objective" and "prefstream objective apply" in b["fix"], b
    probe = yaml.safe_load((DEPLOY / "k8s/curate.yaml").read_text())
    [c] = probe["spec"]["template"]["spec"]["containers"]
    assert get(f"http://127.0.0.1:{port}{c['readinessProbe']['httpGet']['path']}").status_code == 503
    assert compose_healthcheck(port) != 0  # `docker compose ps`: unhealthy

    gauge = 'prefstream_stage_blocked{job="prefstream",stage="curate",reason="no_objective"}'
    until(lambda: prom.value(gauge) == 1, 60, "Prometheus never scraped curate's blocked gauge at 1", prom.log)
    [rule] = [r for r in alert_rules() if r["alert"] == "PrefstreamStageBlocked"]
    fired = prom.query(rule["expr"])  # the alert's own expression holds
    assert [(x["metric"]["stage"], x["metric"]["reason"]) for x in fired] == [("curate", "no_objective")]
    pending = until(lambda: prom.alerts("PrefstreamStageBlocked"), 30, "the blocked alert never became pending",
                    prom.log)
    assert [(a["state"], a["labels"]["stage"], a["labels"]["reason"]) for a in pending] == [
        ("pending", "curate", "no_objective")]
    assert "prefstream objective apply" in pending[0]["annotations"]["description"]
    # the prompts wait: nothing ended, nothing but the malformed message was dead-lettered
    assert prom.value("sum(prefstream_outcomes_total)") in (None, 0.0)
    assert prom.value('sum(prefstream_dead_letters_total{outcome!="malformed"})') in (None, 0.0)


def recover(prom: Prometheus, s, port: int, tmp_path: Path, n: int, log: Path) -> None:
    """The fix the block names: `prefstream objective apply FILE`; then everything flows."""
    path = tmp_path / "episode.yaml"
    path.write_text(yaml.safe_dump(msgspec.to_builtins(OBJ)))
    applied = subprocess.run([sys.executable, "-m", "streams.commands.cli", "objective", "apply", str(path)], cwd=ROOT,
                             env=settings_env(s), capture_output=True, text=True, timeout=120)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    until(lambda: (r := readiness(port)) and r[0] == 200 and r[1]["ready"] is True, 90,
          "the worker never became ready after the objective was published", log)
    assert compose_healthcheck(port) == 0
    until(lambda: prom.value('prefstream_stage_blocked{stage="curate",reason="no_objective"}') == 0, 30,
          "Prometheus never saw the blocked gauge return to 0", prom.log)
    until(lambda: prom.value("sum(prefstream_outcomes_total)") == n, 120,
          f"Prometheus never counted {n} outcomes", log)
    assert prom.value('sum(prefstream_outcomes_total{outcome="records"})') == n - 1
    until(lambda: prom.value("sum(prefstream_dead_letters_total)") == 1, 30, "the malformed message was not "
          "dead-lettered", log)
    assert prom.value('sum(prefstream_dead_letters_total{outcome="malformed"})') == 1
    until(lambda: not prom.alerts("PrefstreamStageBlocked"), 30, "the blocked alert never resolved", prom.log)


def every_query_evaluates(prom: Prometheus) -> None:
    """Every dashboard query and every alert's measured aggregate evaluates without error and,
    unless NOT_IN_EPISODE says why it cannot, returns series; every rule's last evaluation
    on this Prometheus was healthy. The dashboard's variable query finds the objective."""
    queries = dashboard_queries() + [p for r in alert_rules() for p in measured(r["expr"])]
    expected = [q for q in queries if not any(k in q for k in NOT_IN_EPISODE)]
    exempt = [q for q in queries if q not in expected]
    assert expected and exempt
    print(f"{len(expected)} queries returned series; {len(exempt)} evaluated only (NOT_IN_EPISODE): {exempt}")
    for q in exempt:
        prom.query(q)  # no error
    deadline = time.monotonic() + 30  # rate() needs two samples of a series that just appeared
    while (empty := [q for q in expected if not prom.query(q)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not empty, f"these queries returned no series: {empty}"
    for r in alert_rules():
        assert prom.query(r["expr"]) is not None  # the whole expression, threshold included, evaluates
    groups = prom.api("rules")["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {r["alert"] for r in alert_rules()}
    assert all(r["health"] == "ok" and not r.get("lastError") for r in rules.values()), rules
    assert OBJ.name in prom.api("label/objective/values", **{"match[]": "prefstream_outcomes_total"})
