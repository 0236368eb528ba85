"""Objectives: YAML in, validated, published under a new version, and kept live in every
worker without a restart.

Two topics hold them (key = objective name):

* ``objectives`` (compacted): the newest spec per name, what the agents follow;
* ``objective-history`` (never compacted): every version ever published, for
  ``show --version``, ``history`` and ``rollback`` (compaction drops them from the first).

Every reader takes the newest version per name itself, so it is right on brokers that do
not compact (Tansu) as well as on Apache Kafka. A worker's live view is
``agents.objectives.registry.ObjectiveRegistry``.
"""
from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml

from schemas import ObjectiveSpec
from streams.admin import producer, reader
from streams.settings import Settings
from streams.topics import MALFORMED, Topic, Topics

logger = logging.getLogger(__name__)

DEFAULT_OBJECTIVE = Path(__file__).with_name("default_objective.yaml")
HISTORY = "objective-history"  # the topic's short name
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
IDLE_POLLS = 4  # empty 0.5 s polls after which a reader takes a topic as read to its end


# an objective is a few KB of YAML; the cap bounds what parsing one may cost
MAX_OBJECTIVE_BYTES = 256 * 1024


class ObjectiveError(ValueError):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases (``&a``/``*a``): an objective never needs them, and a few
    hundred bytes of nested aliases expand to gigabytes (a "billion laughs")."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.YAMLError(f"YAML anchors and aliases (&, *) are not allowed in an objective "
                                 f"(line {event.start_mark.line + 1}); write the values out")
        return super().compose_node(parent, index)


def parse_objective(text: str, origin: str = "objective") -> ObjectiveSpec:
    """An objective from YAML text; ``origin`` names it in errors."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_OBJECTIVE_BYTES:
        raise ObjectiveError(f"{origin}: {size} bytes is over the {MAX_OBJECTIVE_BYTES}-byte limit for an objective")
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise ObjectiveError(f"{origin}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ObjectiveError(f"{origin}: an objective is a YAML mapping with at least `name`")
    data.setdefault("type", "objective.v1")
    try:
        return msgspec.convert(data, ObjectiveSpec)
    except msgspec.ValidationError as e:
        raise ObjectiveError(f"{origin}: {e}") from None


def load_objective(path: str | Path | None = None) -> ObjectiveSpec:
    """An objective from a YAML file (the bundled default when ``path`` is None)."""
    path = Path(path) if path else DEFAULT_OBJECTIVE
    if not path.is_file():
        raise ObjectiveError(f"objective file {path} does not exist; see `prefstream objective template`")
    if path.stat().st_size > MAX_OBJECTIVE_BYTES:
        raise ObjectiveError(f"{path}: {path.stat().st_size} bytes is over the {MAX_OBJECTIVE_BYTES}-byte "
                             "limit for an objective")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ObjectiveError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_objective(text, str(path))


def to_yaml(spec: ObjectiveSpec) -> str:
    data = msgspec.to_builtins(spec)
    data.pop("type", None)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def content(spec: ObjectiveSpec) -> dict[str, Any]:
    """Everything that decides what the objective does: all but the version."""
    data = msgspec.to_builtins(spec)
    data.pop("version", None)
    data.pop("type", None)
    return data


def diff(old: ObjectiveSpec | None, new: ObjectiveSpec, new_label: str) -> str:
    """A unified diff of the YAML of two versions (the version line left out)."""
    def lines(spec: ObjectiveSpec | None) -> list[str]:
        return [] if spec is None else yaml.safe_dump(content(spec), sort_keys=False, width=100).splitlines(True)

    old_label = f"{old.ref} (live)" if old else "(no live version)"
    return "".join(difflib.unified_diff(lines(old), lines(new), old_label, new_label))


def changed_fields(old: ObjectiveSpec, new: ObjectiveSpec) -> list[str]:
    """Dotted paths (two levels deep) whose values differ: ``instantiation.min_margin``."""
    a, b = content(old), content(new)
    out = []
    for key in a.keys() | b.keys():
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += [f"{key}.{k}" for k in x.keys() | y.keys() if x.get(k) != y.get(k)]
        elif x != y:
            out.append(key)
    return sorted(out)


def problems(spec: ObjectiveSpec, settings: Settings | None = None) -> list[str]:
    """Why ``spec`` cannot run, or ``[]``. With ``settings``, also that every model backend
    it names is configured (an ``openai`` model needs a server URL) and that every server it
    names is allowed (``streams.endpoints``)."""
    try:  # a spec built in code skipped msgspec's checks of names and types
        msgspec.convert(msgspec.to_builtins(spec), ObjectiveSpec)
    except msgspec.ValidationError as e:
        return [str(e)]
    from agents.evaluators import validate as validate_evaluation

    out = []
    if not NAME.fullmatch(spec.name):
        out.append(f"name {spec.name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    syn = spec.synthesis
    if spec.instantiation.pairs == "best_vs_worst" and syn.candidates < 2:
        out.append(f"synthesis.candidates is {syn.candidates}; a pair needs at least 2")
    if not [g for g in syn.generators if g.backend != "reference"]:
        out.append("synthesis.generators is empty of models (a reference generator samples nothing); name at least one model")
    if any(g.weight < 0 or (g.count or 0) < 0 for g in syn.generators):
        out.append("synthesis.generators: weights and counts must not be negative")
    out += policy_problems(syn)
    try:
        validate_evaluation(spec.evaluation)
    except ValueError as e:
        out.append(f"evaluation: {e}")
    fraction = spec.routing.fraction
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        out.append(f"routing.fraction {fraction} is not in [0, 1]")
    if settings is not None:
        out += _unconfigured(spec, settings)
        out += _over_maxima(spec, settings)
    return out


def policy_problems(syn) -> list[str]:
    """Generators naming a policy: a valid name, on a backend that loads adapters."""
    out = []
    for i, g in enumerate(syn.generators):
        if g.policy is None:
            continue
        if not NAME.fullmatch(g.policy):
            out.append(f"synthesis.generators[{i}].policy {g.policy!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if g.backend not in ("llamacpp", "openai"):
            out.append(f"synthesis.generators[{i}]: the {g.backend} backend cannot follow policy {g.policy!r}; "
                       "use llamacpp (GGUF LoRA) or openai (vLLM with --enable-lora)")
    return out


def _over_maxima(spec: ObjectiveSpec, settings: Settings) -> list[str]:
    """Sandbox limits an objective asks for above the operator's maxima (``code_max_*``)."""
    from agents.evaluators.code import check_params

    return [p for e in spec.evaluation.evaluators if e.name == "code"
            for p in check_params(dict(e.params), settings)]


def _unconfigured(spec: ObjectiveSpec, settings: Settings) -> list[str]:
    from streams import endpoints

    return _no_server(spec, settings) + endpoints.problems(spec, settings)


def _no_server(spec: ObjectiveSpec, settings: Settings) -> list[str]:
    models = [(f"synthesis.generators[{i}]", g) for i, g in enumerate(spec.synthesis.generators)]
    if any(e.name == "judge" for e in spec.evaluation.evaluators):
        models.append(("evaluation.judge", spec.evaluation.judge))
    return [f"{where}: the openai backend for {m.model!r} has no server; set base_url there or "
            "PREFSTREAM_OPENAI_BASE_URL" for where, m in models
            if m.backend == "openai" and not (m.base_url or settings.openai_base_url)]


def validate(spec: ObjectiveSpec, settings: Settings | None = None) -> None:
    """Raise ``ObjectiveError`` naming every reason ``spec`` cannot run."""
    found = problems(spec, settings)
    if found:
        raise ObjectiveError(f"objective {spec.name!r} refused: " + "; ".join(found))


async def read_all(settings: Settings, sources: list[Topic]) -> list[tuple[Topic, Any, float]]:
    """Every decodable record of ``sources`` as ``(topic, value, time)``, in offset order per
    partition, up to the end offsets seen at the start (or until the broker has nothing
    more for two seconds, where a broker reports an end offset it never serves)."""
    consumer = await reader(settings, [t.name for t in sources])
    by_name = {t.name: t for t in sources}
    out: list[tuple[Topic, Any, float]] = []
    try:
        ends = await consumer.end_offsets(list(consumer.assignment()))
        idle = 0
        while not await caught_up(consumer, ends) and idle < IDLE_POLLS:
            batch = await consumer.getmany(timeout_ms=500)
            idle = 0 if batch else idle + 1
            for msgs in batch.values():
                for m in msgs:
                    t = by_name[m.topic]
                    try:
                        out.append((t, t.codec.decode(m.value), m.timestamp / 1000))
                    except MALFORMED as e:
                        logger.error("undecodable record at %s[%d]@%d: %s", m.topic, m.partition, m.offset, e)
    finally:
        await consumer.stop()
    return out


async def caught_up(consumer, ends: dict) -> bool:
    return all([await consumer.position(tp) >= end for tp, end in ends.items()])


@dataclass
class Store:
    """What the two objective topics hold: the live spec per name and every version known."""

    live: dict[str, ObjectiveSpec]
    versions: dict[str, dict[int, tuple[ObjectiveSpec, float]]]

    def next_version(self, name: str) -> int:
        live = self.live.get(name)
        return max([0, live.version if live else 0, *self.versions.get(name, {})]) + 1


async def read_store(settings: Settings, topics: Topics) -> Store:
    live: dict[str, ObjectiveSpec] = {}
    versions: dict[str, dict[int, tuple[ObjectiveSpec, float]]] = {}
    for topic, spec, at in await read_all(settings, [topics.objectives, getattr(topics, HISTORY)]):
        if topic is topics.objectives and (spec.name not in live or spec.version >= live[spec.name].version):
            live[spec.name] = spec
        known = versions.setdefault(spec.name, {})
        if topic.spec.short == HISTORY or spec.version not in known:  # history is the record of each version
            known[spec.version] = (spec, at)
    return Store(live, versions)


async def publish(settings: Settings, topics: Topics, spec: ObjectiveSpec) -> None:
    """Append ``spec`` to the history, then make it the live version."""
    history = getattr(topics, HISTORY)
    p = producer(settings)
    await p.start()
    try:
        for topic in (history, topics.objectives):
            await p.send_and_wait(topic.name, topic.codec.encode(spec), key=spec.name.encode())
    finally:
        await p.stop()
    logger.info("published objective %s", spec.ref)


@dataclass(frozen=True)
class Applied:
    status: str  # "published" | "unchanged" | "dry-run"
    spec: ObjectiveSpec  # the live version now
    previous: ObjectiveSpec | None
    diff: str = ""


async def apply(settings: Settings, topics: Topics, spec: ObjectiveSpec, label: str = "new",
                dry_run: bool = False) -> Applied:
    """Validate ``spec`` and publish it as the next version of its name, unless its content
    equals the live version's. An invalid spec raises and the live version stays."""
    validate(spec, settings)
    store = await read_store(settings, topics)
    live = store.live.get(spec.name)
    if live is not None and content(live) == content(spec):
        return Applied("unchanged", live, live)
    new = msgspec.structs.replace(spec, version=store.next_version(spec.name))
    if not dry_run:
        await publish(settings, topics, new)
    return Applied("dry-run" if dry_run else "published", new, live, diff(live, new, f"{label} ({new.ref})"))


async def rollback(settings: Settings, topics: Topics, name: str, to: int) -> Applied:
    """Publish version ``to`` of ``name`` again, as the next version."""
    store = await read_store(settings, topics)
    known = store.versions.get(name, {})
    if to not in known:
        have = ", ".join(str(v) for v in sorted(known)) or "none"
        raise ObjectiveError(f"objective {name!r} has no version {to} (known versions: {have}); "
                             "see `prefstream objective history NAME`")
    return await apply(settings, topics, known[to][0], label=f"{name}@{to}")
