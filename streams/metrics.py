"""Prometheus metrics, built by a factory over a CollectorRegistry.

Every name starts with ``prefstream_``; labels are bounded: agent, topic, outcome, backend,
model, objective (the name; its version is the value of ``prefstream_objective_version``),
kind, evaluator, result, policy (the name, never the version). One ``Metrics`` per worker,
served on ``/metrics``; the tap, the dataset API and ``prefstream train`` may be given one
(the records their staleness bound skips).

Two wrappers feed it without touching the stages: ``instrument()`` wraps an agent handler
(in-flight messages, records per kind, outcomes, objective versions, evaluator results) and
``MeteredGenerator`` wraps a model backend (requests, latency, tokens, in-flight requests).

Its series are updated several times per message, so they are ``streams.series``' plain
numbers, read by a collector when /metrics is scraped.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

from prometheus_client import CollectorRegistry

from schemas import JudgedSet, ObjectiveSpec
from streams.series import LoopCounter, LoopGauge, LoopHistogram

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120)
MODEL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


def serve_http(port: int, host: str, registry: CollectorRegistry, health: Any = None) -> None:
    """prometheus-client's WSGI server in a daemon thread, with the readiness paths."""
    import json
    import threading
    from wsgiref.simple_server import make_server

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path not in ("/readyz", "/healthz") or health is None:
            return metrics_app(environ, start_response)
        blocked = health.report() if path == "/readyz" else []
        body = json.dumps({"ready": not blocked, "worker": health.worker, "blocked": blocked}).encode()
        start_response("503 Service Unavailable" if blocked else "200 OK",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    httpd = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True, name="metrics-http").start()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._children: dict[tuple, Any] = {}
        self._versions: dict[str, int] = {}  # the objective version last set per name
        # the bus, per agent
        self.messages_in = LoopCounter("prefstream_messages_in_total", "Messages consumed by an agent",
                                   ["agent", "topic"], r)
        self.messages_out = LoopCounter("prefstream_messages_out_total", "Messages produced by an agent",
                                    ["agent", "topic"], r)
        self.dead_letters = LoopCounter("prefstream_dead_letters_total", "Messages an agent dead-lettered",
                                    ["agent", "topic", "outcome"], r)
        self.processing = LoopHistogram("prefstream_processing_seconds", "Time to process one message",
                                    ["agent"], r, buckets=LATENCY_BUCKETS)
        self.in_flight = LoopGauge("prefstream_messages_in_flight", "Messages an agent is processing now",
                               ["agent"], r)
        # what came out, per objective
        self.outcomes = LoopCounter("prefstream_outcomes_total", "How prompts ended (records, no_pair, dropped)",
                                ["objective", "outcome"], r)
        self.records = LoopCounter("prefstream_records_total", "Preference records produced, by kind",
                               ["objective", "kind"], r)
        self.objective_version = LoopGauge("prefstream_objective_version",
                                       "Version of each objective in the newest message this worker handled",
                                       ["objective"], r)
        # evaluator results, counted on every judged set this worker produced (the bias
        # figures themselves are agents.evaluators.bias's gauges, on this same registry)
        self.scores = LoopCounter("prefstream_evaluator_scores_total",
                              "Candidate scorings by evaluator; result is scored, parse_failure, error or unscored",
                              ["objective", "evaluator", "result"], r)
        # the staleness bound (``streams.policies.staleness``) where the tap, the dataset API or
        # the trainer applies it
        self.policy_stale_skipped = LoopCounter(
            "prefstream_policy_stale_skipped_total",
            "Records skipped as more than --max-policy-lag versions behind their policy's newest, by policy name",
            ["policy"], r)
        # model backends
        self.model_requests = LoopCounter("prefstream_model_requests_total", "Model requests, by outcome (ok, error)",
                                      ["backend", "model", "outcome"], r)
        self.model_seconds = LoopHistogram("prefstream_model_request_seconds", "Model request latency, retries included",
                                       ["backend", "model"], r, buckets=MODEL_BUCKETS)
        self.model_tokens_in = LoopCounter("prefstream_model_input_tokens_total",
                                       "Prompt tokens, per generation, as the backend reports them",
                                       ["backend", "model"], r)
        self.model_tokens_out = LoopCounter("prefstream_model_output_tokens_total", "Generated tokens",
                                        ["backend", "model"], r)
        self.model_in_flight = LoopGauge("prefstream_model_requests_in_flight", "Model requests waiting for an answer",
                                     ["backend", "model"], r)

    def child(self, metric, *labels: str):
        """``metric.labels(*labels)``, looked up once (labels are bounded, so is the cache)."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def sample(self, name: str, **labels: str) -> float | None:
        """The value of one series as a scrape would show it (None: not there)."""
        return self.registry.get_sample_value(name, labels)

    def names(self) -> set[str]:
        """Every series name a query can use (``_total``; ``_bucket``, ``_sum``, ``_count``)."""
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
        return {m.name + s for m in self.registry.collect() for s in suffixes.get(m.type, ("",))}

    def serve(self, port: int, host: str = "127.0.0.1", health: Any = None) -> bool:
        """Expose /metrics on host:port (0 = off), and with ``health`` (``streams.health.Health``)
        ``/readyz`` (200, or 503 naming the blocked stages, their reasons and fixes) and
        ``/healthz`` (200 while the process runs). A port in use is logged, not fatal: the
        worker goes on without /metrics."""
        if not port:
            return False
        try:
            serve_http(port, host, self.registry, health)
        except OSError as e:
            logger.error("metrics: cannot listen on %s:%d (%s); this worker has no /metrics. "
                         "Pass --metrics-port with a free port, or 0 to turn metrics off", host, port, e)
            return False
        logger.info("metrics on http://%s:%d/metrics", host, port)
        return True

    def instrument(self, handler: Callable[[Any], Awaitable[list]]) -> Callable[[Any], Awaitable[list]]:
        """``handler`` with what it emits observed (the runtime sets the in-flight gauge)."""
        async def observed(value: Any) -> list:
            emits = await handler(value)
            self.observe(emits)
            return emits

        return observed

    def observe(self, emits: list) -> None:
        """Count what one handler call emitted (``streams.runtime.Emit``s)."""
        for e in emits:
            name, version = objective_of(e.value)
            if name is None:
                continue
            if version is not None and self._versions.get(name) != version:  # set on a change only
                self._versions[name] = version
                self.child(self.objective_version, name).set(version)
            if e.topic.short in ("preferences", "preferences-shadow"):
                self.child(self.records, name, getattr(e.value, "kind", "pair")).inc()
            elif e.topic.short == "outcomes":
                self.child(self.outcomes, name, e.value.status).inc()
            elif isinstance(e.value, JudgedSet):
                self.observe_judged(name, e.value)

    def observe_judged(self, objective: str, jset: JudgedSet) -> None:
        counts: dict[tuple[str, str], int] = {}
        for j in jset.judged:
            for s in j.scores:
                result = "scored" if s.value is not None else (
                    "parse_failure" if s.error == "parse_failure" else "error" if s.error else "unscored")
                counts[s.evaluator, result] = counts.get((s.evaluator, result), 0) + 1
        for (evaluator, result), n in counts.items():
            self.child(self.scores, objective, evaluator, result).inc(n)


def served(port: int | None, host: str) -> Metrics | None:
    """A ``Metrics`` on /metrics at host:port for a command that is not a worker (``tap``,
    ``train``: their ``--metrics-port``); None when ``port`` is 0 or None."""
    if not port:
        return None
    metrics = Metrics()
    metrics.serve(port, host)
    return metrics


def objective_of(value: Any) -> tuple[str | None, int | None]:
    """(name, version) of the objective a message was made under."""
    obj = getattr(value, "objective_ref", None) or getattr(value, "objective", None)  # a bound message: its ref
    if isinstance(obj, ObjectiveSpec):
        return obj.name, obj.version
    if isinstance(obj, str) and obj:
        name, _, version = obj.rpartition("@")
        if name and version.isdigit():
            return name, int(version)
        return obj, None
    return None, None


class MeteredGenerator:
    """A model backend with request count, latency, tokens and in-flight requests recorded;
    everything else passes through to the wrapped generator."""

    def __init__(self, inner: Any, metrics: Metrics) -> None:
        self.inner = inner
        self.backend, self.model = inner.backend, inner.model
        labels = (self.backend, self.model)
        self._ok = metrics.model_requests.labels(*labels, "ok")
        self._error = metrics.model_requests.labels(*labels, "error")
        self._seconds = metrics.model_seconds.labels(*labels)
        self._tokens_in = metrics.model_tokens_in.labels(*labels)
        self._tokens_out = metrics.model_tokens_out.labels(*labels)
        self._in_flight = metrics.model_in_flight.labels(*labels)

    async def generate(self, req: Any) -> list:
        self._in_flight.inc()
        started = time.perf_counter()
        try:
            gens = await self.inner.generate(req)
        except BaseException:
            self._error.inc()
            raise
        finally:
            self._in_flight.dec()
            self._seconds.observe(time.perf_counter() - started)
        self._ok.inc()
        self._tokens_in.inc(sum(g.tokens_in for g in gens))
        self._tokens_out.inc(sum(g.tokens_out for g in gens))
        return gens

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"Metered({self.inner!r})"
