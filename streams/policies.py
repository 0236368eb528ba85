"""Policies: LoRA adapters published under a new version per name, and kept live in every
worker without a restart (``streams.policy_registry.PolicyRegistry``).

Two topics hold them (key = policy name), like objectives: ``policies`` (compacted, the newest
per name) and ``policy-history`` (every version, never compacted). Versions only go up: a
rollback publishes the old adapter again as the next version.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from schemas import Policy
from streams.admin import producer, reader
from streams.settings import Settings
from streams.topics import MALFORMED, Topic, Topics, from_settings

logger = logging.getLogger(__name__)

HISTORY = "policy-history"  # the topic's short name
IDLE_POLLS = 4  # empty 0.5 s polls after which a reader takes a topic as read to its end


class PolicyError(ValueError):
    """A policy cannot be published or used; the message names the fix."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_adapter(policy: Policy) -> Policy:
    """``policy`` with its GGUF file's sha256 filled in; ``PolicyError`` when it names no
    adapter, a file that is not there, a PEFT directory without ``adapter_config.json``, or a
    sha256 its file does not have."""
    if not policy.adapter_gguf and not policy.adapter_peft:
        raise PolicyError(f"policy {policy.name!r} names no adapter: give a GGUF LoRA file (--gguf) for llama.cpp "
                          "and/or a PEFT adapter directory (--peft) for vLLM")
    if policy.adapter_peft and not (Path(policy.adapter_peft) / "adapter_config.json").is_file():
        raise PolicyError(f"PEFT adapter {policy.adapter_peft!r} has no adapter_config.json: give the directory "
                          "PEFT's save_pretrained wrote")
    if not policy.adapter_gguf:
        return policy
    path = Path(policy.adapter_gguf)
    if not path.is_file():
        raise PolicyError(f"GGUF adapter {policy.adapter_gguf!r} does not exist or is not a file: write it first "
                          "(`prefstream train` exports one) and publish its path")
    digest = file_sha256(path)
    if policy.sha256 and policy.sha256 != digest:
        raise PolicyError(f"GGUF adapter {policy.adapter_gguf!r} has sha256 {digest}, not the {policy.sha256} given: "
                          "the file changed since it was hashed; publish the file you mean without --sha256 "
                          "(it is computed) or with its real digest")
    return msgspec.structs.replace(policy, sha256=digest)


async def caught_up(consumer, ends: dict) -> bool:
    return all([await consumer.position(tp) >= end for tp, end in ends.items()])


async def read_topics(settings: Settings, sources: list[Topic]) -> list[tuple[Topic, Policy]]:
    """Every decodable policy on ``sources``, in offset order per partition, up to the end offsets
    seen at the start (or until the broker has nothing more for two seconds)."""
    consumer = await reader(settings, [t.name for t in sources])
    by_name = {t.name: t for t in sources}
    out: list[tuple[Topic, Policy]] = []
    try:
        ends = await consumer.end_offsets(list(consumer.assignment()))
        idle = 0
        while not await caught_up(consumer, ends) and idle < IDLE_POLLS:
            batch = await consumer.getmany(timeout_ms=500)
            idle = 0 if batch else idle + 1
            for msgs in batch.values():
                for m in msgs:
                    try:
                        out.append((by_name[m.topic], by_name[m.topic].codec.decode(m.value)))
                    except MALFORMED as e:
                        logger.error("undecodable policy at %s[%d]@%d: %s", m.topic, m.partition, m.offset, e)
    finally:
        await consumer.stop()
    return out


@dataclass
class PolicyStore:
    """What the two topics hold: the newest version per name and every version known."""

    live: dict[str, Policy]
    versions: dict[str, dict[int, Policy]]

    def newest(self, name: str) -> Policy | None:
        known = self.versions.get(name)
        return known[max(known)] if known else self.live.get(name)

    def next_version(self, name: str) -> int:
        live = self.live.get(name)
        return max([0, live.version if live else 0, *self.versions.get(name, {})]) + 1


async def read_policies(settings: Settings, topics: Topics | None = None) -> PolicyStore:
    topics = topics or from_settings(settings)
    live: dict[str, Policy] = {}
    versions: dict[str, dict[int, Policy]] = {}
    for topic, policy in await read_topics(settings, [topics.policies, getattr(topics, HISTORY)]):
        if topic is topics.policies and (policy.name not in live or policy.version >= live[policy.name].version):
            live[policy.name] = policy
        known = versions.setdefault(policy.name, {})
        if topic.spec.short == HISTORY or policy.version not in known:  # history is the record of each version
            known[policy.version] = policy
    return PolicyStore(live, versions)


async def _write(settings: Settings, topics: Topics, policy: Policy) -> None:
    """History first, then the compacted topic: a version in ``policies`` is always in history."""
    p = producer(settings)
    await p.start()
    try:
        for topic in (getattr(topics, HISTORY), topics.policies):
            await p.send_and_wait(topic.name, topic.codec.encode(policy), key=policy.name.encode())
    finally:
        await p.stop()
    logger.info("published policy %s (%s)", policy.ref, policy.adapter_gguf or policy.adapter_peft)


async def publish_policy(settings: Settings, policy: Policy, topics: Topics | None = None) -> Policy:
    """Check ``policy``'s adapter and publish it as the next version of its name (whatever
    ``policy.version`` says); returns what was published. ``parent`` defaults to the version
    that was newest; ``created_at`` is now."""
    policy = check_adapter(policy)
    topics = topics or from_settings(settings)
    store = await read_policies(settings, topics)
    newest = store.newest(policy.name)
    version = store.next_version(policy.name)
    parent = policy.parent if policy.parent is not None else (newest.version if newest else None)
    new = msgspec.structs.replace(policy, version=version, created_at=time.time(), parent=parent)
    await _write(settings, topics, new)
    return new


async def policy_history(settings: Settings, name: str | None = None) -> list[Policy]:
    """Every published version (of ``name``, or of every policy), by name then version."""
    store = await read_policies(settings)
    names = [name] if name is not None else sorted(store.versions)
    return [p for n in names for _, p in sorted(store.versions.get(n, {}).items())]


async def newest_policy(settings: Settings, name: str) -> Policy | None:
    return (await read_policies(settings)).newest(name)


async def rollback_policy(settings: Settings, name: str, to: int) -> Policy:
    """Publish version ``to``'s adapter again as the next version (its sha256 checked again)."""
    store = await read_policies(settings)
    known = store.versions.get(name, {})
    if to not in known:
        have = ", ".join(str(v) for v in sorted(known)) or "none"
        raise PolicyError(f"policy {name!r} has no version {to} (known versions: {have}); "
                          "see `prefstream policy history NAME`")
    old = known[to]
    again = msgspec.structs.replace(old, adapter_name=old.served_name, parent=to,
                                    note=f"rollback to v{to}" + (f": {old.note}" if old.note else ""))
    return await publish_policy(settings, again)


def adapter_file(policy: Policy, settings: Settings) -> Path:
    """The GGUF LoRA file a llamacpp worker may load for ``policy``: inside PREFSTREAM_POLICY_DIR
    or PREFSTREAM_MODEL_DIR (a relative name is taken in the first set), links and ``..``
    resolved, so a message cannot make a worker open any other file. ``PolicyError`` otherwise."""
    if not policy.adapter_gguf:
        raise PolicyError(f"policy {policy.ref} has no GGUF adapter for llama.cpp; publish one with --gguf")
    roots = [Path(d).resolve() for d in (settings.policy_dir, settings.model_dir) if d]
    if not roots:
        raise PolicyError(f"policy {policy.ref} names the adapter {policy.adapter_gguf!r}, but neither "
                          "PREFSTREAM_POLICY_DIR nor PREFSTREAM_MODEL_DIR is set: set PREFSTREAM_POLICY_DIR to "
                          "the directory the adapters are written to")
    path = (roots[0] / policy.adapter_gguf).resolve()  # an absolute name replaces the root
    if not any(path.is_relative_to(r) for r in roots):
        raise PolicyError(f"policy {policy.ref} names the adapter {policy.adapter_gguf!r}, outside "
                          f"PREFSTREAM_POLICY_DIR / PREFSTREAM_MODEL_DIR ({', '.join(map(str, roots))}): publish "
                          "an adapter inside one, or point PREFSTREAM_POLICY_DIR at its directory")
    return path
