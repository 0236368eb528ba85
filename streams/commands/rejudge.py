"""``prefstream rejudge --objective NAME[@V] [--from NAME@OLD | --since TIME | --prompts FILE]
[--dry-run]``: stored candidate sets judged again under another objective version, by the
running workers, with no generator call (``streams.commands.objectives.rejudge``)."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path

from streams.commands import CliError

_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """``30m``/``2h``/``7d`` ago, epoch seconds, or an ISO 8601 time (UTC unless it says)."""
    m = _AGO.fullmatch(text.strip())
    if m:
        return (now or time.time()) - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--since {text!r}: give 2h / 7d (ago), epoch seconds or an ISO time "
                       "(2026-12-01T00:00)") from None
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()


def read_prompt_ids(path: str) -> set[str]:
    """Prompt ids, one a line: a bare id or a JSON object with ``id`` (a prompts file)."""
    p = Path(path)
    if not p.is_file():
        raise CliError(f"--prompts {path}: no such file; give a file of prompt ids, one a line")
    ids = set()
    for line in p.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                ids.add(str(json.loads(line)["id"]))
            except (ValueError, KeyError):
                raise CliError(f"--prompts {path}: a JSON line without an `id`: {line[:80]}") from None
        elif line:
            ids.add(line)
    return ids


def _target(store, side: str):
    from streams.commands.objectives.compare import parse_side

    try:
        name, version = parse_side(side)
    except ValueError as e:
        raise CliError(f"--objective: {e}") from None
    known = store.versions.get(name, {})
    if version is None:
        spec = store.live.get(name)
        if spec is None:
            raise CliError(f"no objective named {name!r}; publish it with `prefstream objective apply FILE.yaml`")
        return spec
    if version not in known:
        have = ", ".join(map(str, sorted(known))) or "none"
        raise CliError(f"{name} has no version {version} (known: {have}); see `prefstream objective history {name}`")
    return known[version][0]


async def _publish(settings, topics, sets, progress: bool) -> None:
    from tqdm import tqdm

    from streams.admin import producer

    p = producer(settings)
    await p.start()
    try:
        with tqdm(total=len(sets), desc="published", unit="set", disable=not progress, file=sys.stderr) as bar:
            for cset in sets:
                await p.send(topics.candidates.name, topics.candidates.codec.encode(cset), key=cset.prompt.id.encode())
                bar.update(1)
            await p.flush()
    finally:
        await p.stop()


async def _wait(settings, topics, sel, timeout: float, progress: bool, since: float) -> tuple[list, set, set]:
    """Every outcome and record, the first sets re-judged and those dead-lettered, once each
    first set is one or the other (or the timeout passed)."""
    from tqdm import tqdm

    from schemas import DeadLetter, Outcome
    from agents.objectives import read_all
    from streams.commands.objectives.rejudge import failed, progress as done_of

    deadline = time.monotonic() + timeout
    shorts = ["outcomes", "preferences", "preferences-shadow", "deadletters"]
    with tqdm(total=len(sel.origins), desc="re-judged", unit="set", disable=not progress, file=sys.stderr) as bar:
        while True:
            values = [v for _, v, _ in await read_all(settings, [getattr(topics, s) for s in shorts])]
            done = done_of([v for v in values if isinstance(v, Outcome)], sel)
            lost = failed([v for v in values if isinstance(v, DeadLetter)], sel, since) - done
            bar.update(len(done) + len(lost) - bar.n)
            if len(done) + len(lost) >= len(sel.origins) or time.monotonic() > deadline:
                return values, done, lost
            await asyncio.sleep(1.0)


def cmd_rejudge(args) -> int:
    from streams.commands.objective import _setup
    from streams.commands.objectives.compare import render
    from agents.objectives import read_all, read_store
    from streams.commands.objectives.rejudge import select, summaries

    if sum(x is not None for x in (args.source, args.since, args.prompts)) > 1:
        raise CliError("choose one of --from, --since and --prompts")
    since = parse_since(args.since) if args.since else None
    prompt_ids = read_prompt_ids(args.prompts) if args.prompts else None
    settings, topics = _setup(args)
    target = _target(asyncio.run(read_store(settings, topics)), args.objective)
    stored = [(c, at) for _, c, at in asyncio.run(read_all(settings, [topics.candidates]))]
    sel = select(stored, target, args.source, since, prompt_ids)
    verb = "would re-judge" if args.dry_run else "re-judging"
    print(f"{verb} {len(sel.new)} candidate set(s) under {target.ref} ({len(sel.done)} already re-judged; "
          f"{len(stored)} stored)", file=sys.stderr)
    if args.dry_run or not sel.origins:
        return 0
    progress, started = not args.quiet, time.time()
    asyncio.run(_publish(settings, topics, sel.new, progress))
    values, done, lost = asyncio.run(_wait(settings, topics, sel, args.timeout, progress, started))
    results = summaries(values, sel)
    if args.json:
        print(json.dumps({"objective": target.ref, "published": len(sel.new), "already": len(sel.done),
                          "rejudged": len(done), "dead_letters": len(lost), "compare": results}))
    else:
        for r in results:
            print(render(r))
    if lost:
        raise CliError(f"{len(lost)} re-judged set(s) were dead-lettered: see `prefstream deadletters list "
                       f"--stage evaluate`, fix the objective ({target.ref}) and run `prefstream rejudge` again")
    if len(done) < len(sel.origins):
        raise CliError(f"{len(sel.origins) - len(done)} of {len(sel.origins)} sets not re-judged after "
                       f"{args.timeout:g}s: are workers running (`prefstream worker`)? They carry on; run "
                       "`prefstream rejudge` again (it publishes nothing twice) for the summary")
    return 0


def register(sub) -> None:
    r = sub.add_parser("rejudge", help="judge stored candidate sets again under another objective version "
                                       "(no generation)")
    r.add_argument("--objective", required=True, help="NAME or NAME@VERSION (default: its live version)")
    r.add_argument("--from", dest="source", metavar="NAME[@OLD]",
                   help="the sets judged under this objective (version); default: other versions of NAME")
    r.add_argument("--since", help="sets stored since then: 2h, 7d (ago), epoch seconds or an ISO time")
    r.add_argument("--prompts", metavar="FILE", help="the sets of these prompt ids (one a line, or JSONL with id)")
    r.add_argument("--dry-run", action="store_true", help="say what would be re-judged; publish nothing")
    r.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the workers (600)")
    r.add_argument("--json", action="store_true", help="the summary as one JSON line")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(fn=cmd_rejudge)
