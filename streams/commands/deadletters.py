"""``prefstream deadletters list|show|replay``: inspect dead letters and re-submit them after a fix.

``replay`` produces each letter's original bytes, with its original key, to its original topic,
so the stage that refused it sees it again. Running it twice is safe: record ids are
deterministic (prompt id, objective@version, inputs), so downstream sinks keep one copy of each.
Within one replay the same original message is sent once, however many letters it caused.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import time

import msgspec

from streams.commands import CliError

logger = logging.getLogger(__name__)
# streams.runtime keeps at most MAX_ORIGINAL_BYTES of an original and says so in the reason
TRUNCATED = "[original truncated:"


def register(sub) -> None:
    p = sub.add_parser("deadletters", help="inspect dead letters and replay them after a fix")
    dsub = p.add_subparsers(dest="action", required=True)
    ls = dsub.add_parser("list", help="one line per dead letter, oldest first")
    _filters(ls)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(fn=cmd_list)
    show = dsub.add_parser("show", help="one dead letter in full, with its original message")
    show.add_argument("ref", help="PARTITION:OFFSET in the deadletters topic (from `list`), or a prompt id")
    show.set_defaults(fn=cmd_show)
    rp = dsub.add_parser("replay", help="re-produce the original messages to their original topics")
    _filters(rp)
    rp.add_argument("--ref", action="append", default=[], help="only this PARTITION:OFFSET (repeatable)")
    rp.add_argument("--dry-run", action="store_true", help="say what would be replayed, send nothing")
    rp.set_defaults(fn=cmd_replay)


def _filters(p) -> None:
    p.add_argument("--stage", help="only letters from this stage (curate, synthesize, evaluate, instantiate)")
    p.add_argument("--error-type", help="only this error type (Rejected, DecodeError, BackendError, …)")
    p.add_argument("--topic", help="only letters whose original came from this topic (short name: prompts)")


async def load(settings, topics) -> list[tuple[str, object]]:
    """(ref, DeadLetter) for every letter in the topic, oldest first."""
    from streams.commands.reports.status import open_consumer, partitions, read_all, read_ends

    consumer = await open_consumer(settings)
    try:
        tps = await partitions(consumer, [topics.deadletters.name])
        if not tps:
            raise CliError(f"topic {topics.deadletters.name} does not exist; check PREFSTREAM_NAMESPACE")
        ends = await read_ends(consumer, tps)
        out = []
        async for rec in read_all(consumer, ends):
            try:
                out.append((rec, topics.deadletters.codec.decode(rec.value)))
            except msgspec.DecodeError:
                logger.warning("%s[%d]@%d is not a dead letter; skipped", rec.topic, rec.partition, rec.offset)
    finally:
        await consumer.stop()
    out.sort(key=lambda rd: (rd[1].created_at, rd[0].timestamp, rd[0].partition, rd[0].offset))
    return [(f"{r.partition}:{r.offset}", d) for r, d in out]


def select(letters, stage=None, error_type=None, topic=None, refs=()) -> list:
    return [(ref, d) for ref, d in letters
            if (not stage or d.stage == stage) and (not error_type or d.error_type == error_type)
            and (not topic or d.topic.rsplit(".", 1)[-1] == topic) and (not refs or ref in refs)]


def as_dict(ref: str, d, full: bool = False) -> dict:
    out = {"ref": ref, "stage": d.stage, "error_type": d.error_type, "error": d.error, "path": d.path,
           "topic": d.topic, "partition": d.partition, "offset": d.offset, "key": d.key,
           "prompt_id": d.prompt_id, "created_at": d.created_at}
    if full:
        try:
            out["original"] = d.original.decode("utf-8")
        except UnicodeDecodeError:
            out["original_base64"] = base64.b64encode(d.original).decode()
    return out


def _run(coro):
    try:
        return asyncio.run(coro)
    except OSError as e:  # unreachable broker, or one that stopped answering fetches
        raise CliError(str(e)) from None


def _context(args):
    from streams.topics import from_settings

    settings = args.settings
    settings.brokers  # noqa: B018 - raises a SettingsError naming PREFSTREAM_BROKER when unset
    return settings, from_settings(settings)


def cmd_list(args) -> int:
    settings, topics = _context(args)
    letters = select(_run(load(settings, topics)), args.stage, args.error_type, args.topic)
    for ref, d in letters:
        if args.json:
            print(json.dumps(as_dict(ref, d)))
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.created_at)) if d.created_at else "?"
            reason = d.error.replace("\n", " ")[:120]
            print(f"{ref}\t{when}\t{d.stage}\t{d.error_type}\t{d.topic}[{d.partition}]@{d.offset}\t"
                  f"{d.prompt_id or '-'}\t{reason}")
    if not args.json:
        print(f"{len(letters)} dead letters", flush=True)
    return 0


def cmd_show(args) -> int:
    settings, topics = _context(args)
    letters = _run(load(settings, topics))
    found = [(ref, d) for ref, d in letters if args.ref in (ref, d.prompt_id)]
    if not found:
        raise CliError(f"no dead letter {args.ref!r}; `prefstream deadletters list` shows the refs")
    for ref, d in found:
        print(json.dumps(as_dict(ref, d, full=True), indent=2))
    return 0


def cmd_replay(args) -> int:
    settings, topics = _context(args)
    letters = select(_run(load(settings, topics)), args.stage, args.error_type, args.topic, set(args.ref))
    plan, skipped = replay_plan(letters, {t.name for t in topics})
    for reason, n in skipped.items():
        print(f"skipped {n}: {reason}")
    if args.dry_run:
        for topic, key, _ in plan:
            print(f"would replay to {topic} key={key!r}")
        print(f"{len(plan)} messages would be replayed")
        return 0
    _run(_produce(settings, plan))
    print(f"replayed {len(plan)} messages from {len(letters)} dead letters", flush=True)
    return 0


def replay_plan(letters, topic_names: set[str]) -> tuple[list[tuple[str, str | None, bytes]], dict[str, int]]:
    """(topic, key, original) to send, each original message once; and what was skipped, why."""
    plan, seen, skipped = [], set(), {}
    for _, d in letters:
        why = None
        if d.topic not in topic_names:
            why = "original topic is not in this namespace"
        elif not d.original:
            why = "no original bytes kept"
        elif TRUNCATED in d.error:
            why = "original was truncated when it was dead-lettered (too large to keep whole)"
        elif (d.topic, d.key, d.original) in seen:
            why = "same original message as another letter"
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        seen.add((d.topic, d.key, d.original))
        plan.append((d.topic, d.key, d.original))
    return plan, skipped


async def _produce(settings, plan) -> None:
    from streams.admin import producer

    p = producer(settings)
    await p.start()
    try:
        for topic, key, value in plan:
            await p.send(topic, value, key=key.encode() if key is not None else None)
        await p.flush()
    finally:
        await p.stop()
