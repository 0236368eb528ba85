"""``prefstream pipeline [--json | --markdown]``: the pipeline table, as the workers bind it."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="the stages: what each reads and writes, its process and concurrency")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON list (for scripts)")
    fmt.add_argument("--markdown", action="store_true", help="a Markdown table (the README's)")
    p.set_defaults(fn=cmd_pipeline)


COLUMNS = ("stage", "worker", "input", "outputs", "process", "concurrency")


def markdown(rows: list[dict]) -> str:
    """The table as the README shows it (every stage also writes ``deadletters``)."""
    head = ["| stage | worker | reads | writes (+ deadletters) | process | concurrency |", "| --- " * 6 + "|"]
    body = [f"| {r['stage']} | {r['worker']} | `{r['input']}` | {', '.join(f'`{t}`' for t in r['outputs'].split(', '))} "
            f"| `{r['process']}` | `{r['concurrency']}` |" for r in rows]
    return "\n".join(head + body)


def cmd_pipeline(args) -> int:
    from agents.pipeline import PIPELINE

    rows = PIPELINE.table()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.markdown:
        print(markdown(rows))
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title="the pipeline (every stage also writes deadletters)")
        for col in COLUMNS:
            t.add_column(col)
        for r in rows:
            t.add_row(*(r[c] for c in COLUMNS))
        Console().print(t)
    return 0
