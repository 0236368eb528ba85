"""The policies in ``prefstream status``: each name's newest version, its base model, its adapter
(sha256 and where it lies) and when it was published, read with the policy reader
(``streams.policies.read_policies``)."""
from __future__ import annotations

from streams.policies import PolicyStore, read_policies
from streams.settings import Settings
from streams.topics import Topics

SHA_SHOWN = 12  # hex digits of the adapter's sha256 the table shows


def newest_policies(store: PolicyStore) -> list[dict]:
    """The newest version of each policy, by name."""
    rows = []
    for name in sorted(set(store.versions) | set(store.live)):
        p = store.newest(name)
        rows.append({"name": p.name, "version": p.version, "ref": p.ref, "base_model": p.base_model,
                     "sha256": p.sha256, "adapter": p.adapter_gguf or p.adapter_peft,
                     "published_at": p.created_at or None, "versions": len(store.versions.get(name, {}))})
    return rows


async def policy_status(settings: Settings, topics: Topics, missing: list[str]) -> list[dict]:
    """``newest_policies`` of what the policy topics hold; none where a policy topic does not
    exist yet (it is listed with the missing topics)."""
    if {topics.policies.name, topics.policy_history.name} & set(missing):
        return []
    return newest_policies(await read_policies(settings, topics))


def render(console, policies: list[dict]) -> None:
    import time

    from rich.table import Table

    if not policies:
        console.print("[dim]no policy published (`prefstream policy publish`, `prefstream train`)[/]")
        return
    t = Table(title="policies (newest version of each)")
    for col in ("policy", "base model", "adapter sha256", "published", "versions"):
        t.add_column(col)
    for p in policies:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p["published_at"])) if p["published_at"] else "?"
        t.add_row(p["ref"], p["base_model"], (p["sha256"] or "-")[:SHA_SHOWN], when, str(p["versions"]))
    console.print(t)
