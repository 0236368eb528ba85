"""One frozen settings object, loaded from ``PREFSTREAM_*`` variables or a config file.

Load it once at the edge (the CLI) and pass it in; nothing below reads ``os.environ``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, get_args, get_origin, get_type_hints

import msgspec
import yaml
from msgspec import Meta

PREFIX = "PREFSTREAM_"


class SettingsError(ValueError):
    """A setting has a bad value; the message names the variable and the fix."""


# the constraints a value is checked against when settings load (msgspec's, so an error names
# the field); enumerations are Literal types, checked the same way
Count = Annotated[int, Meta(ge=1)]
NonNegative = Annotated[int, Meta(ge=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]
Seconds = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
Share = Annotated[float, Meta(ge=0, le=1)]


@dataclass(frozen=True)
class Settings:
    # bus
    broker: str | None = None  # "host:port[,host:port]" or "kafka://..."; None = embedded Tansu
    namespace: str = "prefstream"
    partitions: Count = 4
    replication: Count = 1
    group: str = ""  # consumer group (prefix of the stages' groups); "" = the namespace
    enable_idempotence: bool = False  # on for Apache Kafka; Tansu's InitProducerId fails
    session_timeout_s: Seconds = 10.0  # Tansu's first join waits half of this
    producer_linger_ms: NonNegative = 20  # batches sends: fewer, larger produce requests (less CPU per message)
    producer_batch_bytes: Count = 256 * 1024  # per partition; a judged set is a few KB
    batch_max_records: Count = 500  # records a stage holds at once, taken but not yet acknowledged
    # cluster security (Apache Kafka); secrets come from the environment or *_FILE files
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = field(default=None, repr=False)
    # models
    model_path: str | None = None  # GGUF for the llamacpp backend; None = bundled Gemma 3 270M
    # the one directory whose GGUF files an objective may name as a llamacpp model (`model:
    # x.gguf`); unset: objectives name no model files (the bundled model or model_path only)
    model_dir: str | None = None
    # the directory whose GGUF LoRA files a published policy may name for the llamacpp backend
    # (besides model_dir); unset and no model_dir: llamacpp workers load no policy adapters
    policy_dir: str | None = None
    llamacpp_threads: Count = 1
    llamacpp_ctx: Count = 2048
    # a completion request's N candidates in one batched decode sharing the prompt's KV cache
    # (agents/backends/llamacpp_batch.py); false: one after another
    llamacpp_batched: bool = True
    openai_base_url: str | None = None
    openai_api_key: str | None = field(default=None, repr=False)  # sent only to openai_base_url's origin
    # model servers an objective may name (generators, judge, reward): comma-separated origins,
    # e.g. "http://gpu-a:8000,http://rm:8000"; openai_base_url's origin is always allowed. The
    # API key is never sent to them (streams.endpoints).
    allowed_endpoints: str | None = None
    request_timeout_s: Seconds = 120.0
    retries: Count = 3
    backoff_s: NonNegativeFloat = 0.5
    breaker_threshold: Count = 5  # consecutive failures that open a model server's circuit
    breaker_cooldown_s: NonNegativeFloat = 5.0  # first open period (doubles per failed probe, ≤ 30 s)
    outage_budget_s: NonNegativeFloat = 300.0  # a model request gives up after this long (the stage blocks)
    max_inflight: Count = 4  # model requests in flight per worker
    # messages in flight in the model-free stages (curate, instantiate): each waits for the
    # broker to acknowledge its outputs, so a few dozen in flight keep the stage busy
    agent_concurrency: Count = 32
    # agents
    default_objective: str = "default"
    # how long the `candidates` topic keeps sets (ms; -1 forever): how far back `rejudge` reaches
    candidates_retention_ms: Annotated[int, Meta(ge=-1)] = 30 * 86_400_000
    objective_wait_s: NonNegativeFloat = 30.0  # how long curate waits for an unknown objective to appear
    # `prefstream run` stops (exit 2, naming the cause and the fix) once a stage has been
    # blocked by its environment this long; a long-running worker waits for the fix instead
    block_fail_s: Seconds = 60.0
    # the code verifier's sandbox (agents.evaluators.sandbox): "bwrap" (contained, else the
    # evaluate stage blocks) or "rlimits-unsafe" (the operator's explicit opt-out: the code then
    # sees the worker's files, processes and network); a delegated cgroup v2 directory for the
    # runs' memory and process limits ("" = cgroup v1 where writable); the most an objective may ask
    code_sandbox: Literal["bwrap", "rlimits-unsafe"] = "bwrap"
    code_sandbox_cgroup: str | None = None
    code_max_wall_s: Seconds = 60.0
    code_max_cpu_s: Count = 30
    code_max_memory_mb: Count = 1024
    code_max_nproc: Count = 64
    # curate's PII scrubbing finds + prefixed phone numbers and those written as phone numbers;
    # national numbers (05321234567, 13812345678) only for these comma-separated ISO regions
    pii_phone_regions: str = ""  # e.g. "US,GB,DE,TR,PH,CN"; each adds libphonenumber's cost (docs/pii.md)
    # worker process
    workers: Count = 1  # worker processes `prefstream run` / `up` start in one group, each with every agent
    web_port: Port = 0  # faust's web server (bound to 127.0.0.1); 0 = a free port
    metrics_port: Port = 9464  # prometheus /metrics; 0 = off
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, so Prometheus can scrape it
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"  # "json": one JSON object per line, with topic/partition/offset fields
    data_dir: str = ".prefstream"
    # ingest API + capture proxy (`prefstream ingest`)
    ingest_keys: str | None = field(default=None, repr=False)  # comma-separated API keys
    ingest_keys_file: str | None = None  # a file of API keys, one a line
    ingest_max_bytes: Count = 1 << 20  # request body limit (413 above it)
    ingest_rate_limit: NonNegativeFloat = 100.0  # items (prompts, labels, proxied requests) per second per key; 0 = off
    ingest_max_items: Count = 1000  # items in one request (413 above it)
    ingest_auth_fail_rate: NonNegativeFloat = 1.0  # failed authentications per second per client address (burst 10)
    ingest_header_timeout_s: Seconds = 10.0  # a request's headers must arrive within this (then the connection closes)
    ingest_body_timeout_s: Seconds = 30.0  # and its body within this (408)
    # keys allowed to send `verification` (reference answers, tests, schemas, patterns) with
    # prompts: comma-separated; any other key's prompt carrying one is refused
    ingest_verification_keys: str | None = field(default=None, repr=False)
    ingest_capture_rate: Share = 1.0  # share of proxied requests captured as prompts
    ingest_capture_queue: Count = 1000  # captures waiting for the broker; more are dropped
    # delivery: "at_least_once" (any broker; deterministic ids make the sinks idempotent) or
    # "exactly_once" (a stage's outputs and input offsets in one transaction per partition batch,
    # streams.txn; a broker with transactions, not Tansu)
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"

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


def _base(typ: Any) -> Any:
    """``int`` for ``Annotated[int, …]``, ``str`` for a Literal of strings, without ``| None``."""
    if get_origin(typ) is Annotated:
        typ = get_args(typ)[0]
    args = [t for t in get_args(typ) if t is not type(None)]
    if get_origin(typ) is Literal:
        return str
    if len(args) == 1 and type(None) in get_args(typ):  # X | None
        return _base(args[0])
    return typ


def _coerce(name: str, typ: Any, raw: Any) -> Any:
    """A value from the environment (a string) as the field's type."""
    if raw is None or not isinstance(raw, str):
        return raw
    base = _base(typ)
    try:
        if base is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if base in (int, float):
            return base(raw)
    except ValueError:
        kind = getattr(base, "__name__", str(base))
        raise SettingsError(
            f"{PREFIX}{name.upper()}={raw!r} is not a valid {kind}; set it to one or unset it"
        ) from None
    return raw


def _checked(typed: dict[str, Any]) -> Settings:
    """``Settings(**typed)`` once every value meets its field's type, choices and range."""
    try:
        return msgspec.convert(typed, Settings)
    except msgspec.ValidationError as e:
        path = str(e).rsplit("`$.", 1)[-1].rstrip("`") if "`$." in str(e) else ""
        name = path.split(".")[0].split("[")[0]
        value = typed.get(name)
        shown = "(hidden)" if name and not _FIELDS[name].repr else repr(value)
        choices = _choices(name)
        why = f"not one of {', '.join(choices)}" if choices else str(e).split(" - at ")[0]
        raise SettingsError(f"{PREFIX}{name.upper()}={shown}: {why}; fix it or unset it") from None


def _choices(name: str) -> list[str]:
    """The values a Literal field takes ([] for other fields)."""
    typ = get_type_hints(Settings).get(name)
    for t in (typ, *get_args(typ)):
        if get_origin(t) is Literal:
            return [str(a) for a in get_args(t)]
    return []


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
    if isinstance(values.get("log_level"), str):
        values["log_level"] = values["log_level"].upper()  # `info` as logging takes it
    hints = get_type_hints(Settings, include_extras=True)
    typed = {k: _coerce(k, hints[k], v) for k, v in values.items()}
    return _checked(typed)


_FIELDS = {f.name: f for f in fields(Settings)}


def dumps(settings: Settings) -> bytes:
    """The whole settings object, secrets included, as JSON: what ``run`` and ``up`` hand each
    worker over a pipe (never a file or the environment)."""
    return msgspec.json.encode(settings)


def loads(data: bytes) -> Settings:
    return _checked(msgspec.json.decode(data))
