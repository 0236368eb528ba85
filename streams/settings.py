"""One frozen settings object, loaded from ``PREFSTREAM_*`` variables or a config file.

Load it once at the edge (the CLI) and pass it in; nothing below reads ``os.environ``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

PREFIX = "PREFSTREAM_"


class SettingsError(ValueError):
    """A setting has a bad value; the message names the variable and the fix."""


@dataclass(frozen=True)
class Settings:
    # bus
    broker: str | None = None  # "host:port[,host:port]" or "kafka://..."; None = embedded Tansu
    namespace: str = "prefstream"
    partitions: int = 4
    replication: int = 1
    group: str = ""  # consumer group (prefix of the stages' groups); "" = the namespace
    enable_idempotence: bool = False  # on for Apache Kafka; Tansu's InitProducerId fails
    session_timeout_s: float = 10.0  # Tansu's first join waits half of this
    producer_linger_ms: int = 20  # batches sends: fewer, larger produce requests (less CPU per message)
    producer_batch_bytes: int = 256 * 1024  # per partition; a judged set is a few KB
    # "batch": each stage takes records in batches with a consumer of its own and never waits
    # per message; "faust": faust's per-event agents (either runs under exactly_once)
    runtime: str = "batch"
    batch_max_records: int = 500  # records a stage holds at once, taken but not yet acknowledged
    # cluster security (Apache Kafka); secrets come from the environment or *_FILE files
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = field(default=None, repr=False)
    # models
    model_path: str | None = None  # GGUF for the llamacpp backend; None = bundled Gemma 3 270M
    llamacpp_threads: int = 1
    llamacpp_ctx: int = 2048
    # a completion request's N candidates in one batched decode sharing the prompt's KV cache
    # (agents/backends/llamacpp_batch.py); false: one after another
    llamacpp_batched: bool = True
    openai_base_url: str | None = None
    openai_api_key: str | None = field(default=None, repr=False)
    request_timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 0.5
    breaker_threshold: int = 5  # consecutive failures that open a model server's circuit
    breaker_cooldown_s: float = 5.0  # first open period (doubles per failed probe, ≤ 30 s)
    outage_budget_s: float = 300.0  # a model request gives up (dead letter) after this long
    max_inflight: int = 4  # model requests in flight per worker
    # messages in flight in the model-free stages (curate, instantiate): each waits for the
    # broker to acknowledge its outputs, so a few dozen in flight keep the stage busy
    agent_concurrency: int = 32
    # agents
    default_objective: str = "default"
    objective_wait_s: float = 30.0  # how long curate waits for an unknown objective to appear
    # `prefstream run` stops (exit 2, naming the cause and the fix) once a stage has been
    # blocked by its environment this long; a long-running worker waits for the fix instead
    block_fail_s: float = 60.0
    # the code verifier's sandbox (agents.evaluators.sandbox): "bwrap" (contained, else the
    # evaluate stage blocks) or "rlimits-unsafe" (the operator's explicit opt-out: the code then
    # sees the worker's files, processes and network); a delegated cgroup v2 directory for the
    # runs' memory and process limits ("" = cgroup v1 where writable); the most an objective may ask
    code_sandbox: str = "bwrap"
    code_sandbox_cgroup: str | None = None
    code_max_wall_s: float = 60.0
    code_max_cpu_s: int = 30
    code_max_memory_mb: int = 1024
    code_max_nproc: int = 64
    # worker process
    workers: int = 1  # worker processes `prefstream run` / `up` start in one group, each with every agent
    web_port: int = 0  # faust's web server (bound to 127.0.0.1); 0 = a free port
    metrics_port: int = 9464  # prometheus /metrics; 0 = off
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, so Prometheus can scrape it
    log_level: str = "INFO"
    log_format: str = "text"  # "json": one JSON object per line, with topic/partition/offset fields
    data_dir: str = ".prefstream"
    # ingest API + capture proxy (`prefstream ingest`)
    ingest_keys: str | None = field(default=None, repr=False)  # comma-separated API keys
    ingest_keys_file: str | None = None  # a file of API keys, one a line
    ingest_max_bytes: int = 1 << 20  # request body limit (413 above it)
    ingest_rate_limit: float = 100.0  # requests per second per key (burst the same); 0 = off
    ingest_capture_rate: float = 1.0  # share of proxied requests captured as prompts
    ingest_capture_queue: int = 1000  # captures waiting for the broker; more are dropped
    # delivery: "at_least_once" (any broker; deterministic ids make the sinks idempotent) or
    # "exactly_once" (transactions: streams.txn's in the batch runtime, faust's in its own;
    # a broker with transactions, not Tansu)
    processing_guarantee: str = "at_least_once"

    @property
    def brokers(self) -> list[str]:
        if not self.broker:
            raise SettingsError("no broker: set PREFSTREAM_BROKER=host:port (or run the embedded one)")
        out = []
        for part in self.broker.split(","):
            part = part.strip().removeprefix("kafka://")
            if part:
                out.append(part)
        return out

    @property
    def group_id(self) -> str:
        """The worker's consumer group: ``group``, else the namespace, so two namespaces on one
        cluster never share group membership (and rebalances)."""
        return self.group or self.namespace

    @property
    def faust_broker(self) -> str:
        return ";".join(f"kafka://{b}" for b in self.brokers)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def _coerce(name: str, typ: str, raw: Any) -> Any:
    if raw is None or not isinstance(raw, str):
        return raw
    typ = typ.replace(" | None", "")
    try:
        if typ == "bool":
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ == "int":
            return int(raw)
        if typ == "float":
            return float(raw)
    except ValueError:
        raise SettingsError(
            f"{PREFIX}{name.upper()}={raw!r} is not a valid {typ}; set it to a {typ} or unset it"
        ) from None
    return raw


def load(env: Mapping[str, str] | None = None, config_file: str | os.PathLike | None = None,
         **overrides: Any) -> Settings:
    """Settings from a config file (YAML mapping of field names), then ``PREFSTREAM_*``
    variables, then explicit overrides — later wins."""
    env = os.environ if env is None else env
    known = {f.name: f for f in fields(Settings)}
    values: dict[str, Any] = {}
    config_file = config_file or env.get(PREFIX + "CONFIG")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise SettingsError(f"config file {path} does not exist; fix {PREFIX}CONFIG or --config")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise SettingsError(f"config file {path} must be a mapping of setting names to values")
        for key, val in data.items():
            if key not in known:
                raise SettingsError(f"config file {path}: unknown setting {key!r}; known: {sorted(known)}")
            values[key] = val
    for name, f in known.items():
        raw = env.get(PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = raw
        secret_file = env.get(PREFIX + name.upper() + "_FILE")
        if secret_file and not f.repr:
            try:
                values[name] = Path(secret_file).read_text().strip()
            except OSError as exc:
                raise SettingsError(f"{PREFIX}{name.upper()}_FILE={secret_file}: cannot read it ({exc.strerror})") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    typed = {k: _coerce(k, str(known[k].type), v) for k, v in values.items()}
    return Settings(**typed)
