"""``prefstream policy …``: publish LoRA adapters as versioned policies that generators follow.

publish NAME --base MODEL [--gguf FILE] [--peft DIR], list, show NAME[@V], history NAME,
rollback NAME --to V. Versions only go up: a rollback publishes the old adapter again as the
next version.
"""
from __future__ import annotations

import asyncio
import json
import time

import msgspec

from schemas import Policy
from schemas.policies import parse_ref
from streams.commands import CliError
from streams.policies import HISTORY, PolicyError, publish_policy, read_policies, rollback_policy


def _setup(args):
    from streams.admin import create_topics
    from streams.topics import from_settings

    settings = args.settings
    settings.brokers  # noqa: B018 - raises a SettingsError naming PREFSTREAM_BROKER when unset
    asyncio.run(create_topics(settings, from_settings(settings)))
    return settings


def _print(policy: Policy, as_json: bool, verb: str) -> int:
    if as_json:
        print(msgspec.json.encode(policy).decode())
    else:
        adapter = ", ".join(filter(None, [policy.adapter_gguf and f"gguf {policy.adapter_gguf}",
                                          policy.adapter_peft and f"peft {policy.adapter_peft}"]))
        print(f"{verb} {policy.ref} on {policy.base_model}: {adapter}")
    return 0


def _policy(args) -> Policy:
    try:
        return msgspec.convert({"type": "policy.v1", "name": args.name, "base_model": args.base,
                                "adapter_gguf": args.gguf, "adapter_peft": args.peft,
                                "adapter_name": args.adapter_name, "sha256": args.sha256,
                                "note": args.note or ""}, Policy)
    except msgspec.ValidationError as e:
        raise CliError(f"policy {args.name!r} refused: {e}; names are 1-64 letters, digits, '.', '_' or '-'") from None


def cmd_publish(args) -> int:
    policy = _policy(args)
    settings = _setup(args)
    try:
        return _print(asyncio.run(publish_policy(settings, policy)), args.json, "published")
    except PolicyError as e:
        raise CliError(str(e)) from None


def cmd_rollback(args) -> int:
    settings = _setup(args)
    try:
        return _print(asyncio.run(rollback_policy(settings, args.name, args.to)), args.json, "published")
    except PolicyError as e:
        raise CliError(str(e)) from None


def cmd_list(args) -> int:
    store = asyncio.run(read_policies(_setup(args)))
    newest = [p for n in sorted(store.versions) if (p := store.newest(n))]
    if args.json:
        print(json.dumps([msgspec.to_builtins(p) for p in newest]))
        return 0
    if not newest:
        print("no policies; publish one with `prefstream policy publish NAME --base MODEL --gguf FILE`")
    for p in newest:
        print(f"{p.name:<24} v{p.version:<5} {p.base_model:<32} {p.adapter_gguf or p.adapter_peft}")
    return 0


def _known(args, name: str) -> dict[int, Policy]:
    store = asyncio.run(read_policies(_setup(args)))
    known = store.versions.get(name)
    if not known:
        have = ", ".join(sorted(store.versions)) or "none"
        raise CliError(f"no policy named {name!r} (known: {have}); see `prefstream policy list`")
    return known


def cmd_show(args) -> int:
    try:
        name, version = parse_ref(args.ref)
    except ValueError as e:
        raise CliError(str(e)) from None
    known = _known(args, name)
    version = max(known) if version is None else version
    if version not in known:
        raise CliError(f"{name} has no version {version}; known: {', '.join(map(str, sorted(known)))}")
    print(json.dumps(msgspec.to_builtins(known[version]), indent=2))
    return 0


def cmd_history(args) -> int:
    known = _known(args, args.name)
    rows = [msgspec.to_builtins(known[v]) for v in sorted(known)]
    if args.json:
        print(json.dumps(rows))
        return 0
    newest = max(known)
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"]))
        parent = f"from v{r['parent']}" if r["parent"] else "first"
        print(f"{'*' if r['version'] == newest else ' '} v{r['version']:<5} {when}  {parent:<9} "
              f"{r['adapter_gguf'] or r['adapter_peft']}  {r['note']}".rstrip())
    return 0


def register(sub) -> None:
    p = sub.add_parser("policy", help="versioned LoRA adapters that generators follow (publish, list, rollback, …)")
    psub = p.add_subparsers(dest="policy_command", required=True)

    pub = psub.add_parser("publish", help="check an adapter and publish it as NAME's next version")
    pub.add_argument("name")
    pub.add_argument("--base", required=True, help="the base model the adapter was trained on")
    pub.add_argument("--gguf", help="a GGUF LoRA file (llama.cpp); its sha256 is computed and published")
    pub.add_argument("--peft", help="a PEFT adapter directory (vLLM's load_lora_adapter lora_path)")
    pub.add_argument("--adapter-name", help="the name vLLM serves it under (default NAME-vVERSION)")
    pub.add_argument("--sha256", help="the GGUF file's expected sha256 (refused if the file differs)")
    pub.add_argument("--note", help="free text kept with the version")
    pub.add_argument("--json", action="store_true", help="print the published policy as JSON")
    pub.set_defaults(fn=cmd_publish)

    ls = psub.add_parser("list", help="every policy's newest version")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=cmd_list)

    s = psub.add_parser("show", help="one version as JSON (the newest unless NAME@VERSION)")
    s.add_argument("ref", metavar="NAME[@VERSION]")
    s.set_defaults(fn=cmd_show)

    h = psub.add_parser("history", help=f"every published version (from the {HISTORY} topic)")
    h.add_argument("name")
    h.add_argument("--json", action="store_true")
    h.set_defaults(fn=cmd_history)

    r = psub.add_parser("rollback", help="publish an earlier version's adapter again, as the next version")
    r.add_argument("name")
    r.add_argument("--to", type=int, required=True, help="the version to restore")
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=cmd_rollback)
