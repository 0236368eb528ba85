"""The dataset card (``README.md``) the tap keeps beside its shards: what the data is, how
many records, which objective versions, models and evaluators made them, the KTO balance,
the columns, and how to load it. The YAML header is the Hugging Face dataset-card header,
so ``datasets.load_dataset(DIR)`` and the Hub find the Parquet shards too."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from streams.commands.tap.formats import Format

TRAINERS = {"trl-dpo": "trl.DPOTrainer", "trl-kto": "trl.KTOTrainer (or BCOTrainer)",
            "trl-reward": "trl.RewardTrainer", "openrlhf": "OpenRLHF train_rm / train_dpo",
            "ranking": "listwise objectives (LiPO, RRHF, PRO)", "scalar": "RL rewards / regression reward models"}


@dataclass
class CardStats:
    records: int = 0
    shards: int = 0
    prompts: set[str] = field(default_factory=set)
    objectives: Counter = field(default_factory=Counter)
    models: Counter = field(default_factory=Counter)
    evaluators: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)

    def add(self, prompt_id: str, objective: str, models: list[str], evaluators: list[str],
            label: bool | None = None) -> None:
        self.records += 1
        self.prompts.add(prompt_id)
        self.objectives[objective] += 1
        self.models.update(set(models))
        self.evaluators.update(evaluators)
        if label is not None:
            self.labels["desirable" if label else "undesirable"] += 1


def _table(counter: Counter, what: str) -> str:
    if not counter:
        return f"_no {what} yet_\n"
    rows = "\n".join(f"| `{k}` | {n} |" for k, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"| {what} | records |\n| --- | --- |\n{rows}\n"


def _balance(stats: CardStats) -> str:
    d, u = stats.labels["desirable"], stats.labels["undesirable"]
    if not d and not u:
        return ""
    text = f"\n## Balance\n\n{d} desirable, {u} undesirable"
    if d and u:
        text += (f" (ratio {d / u:.3f}). TRL's KTO guidance keeps desirable_weight × {d} / "
                 f"(undesirable_weight × {u}) in [1, 4/3]; e.g. desirable_weight={max(1.0, u / d):.2f}")
    return text + ".\n"


def render(fmt: Format, stats: CardStats, topic: str = "") -> str:
    columns = "\n".join(f"| `{f.name}` | `{f.type}` |" for f in fmt.schema)
    header = ("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
              "    path: data/train-*.parquet\n"
              f"tags:\n- prefstream\n- {fmt.name}\n- {fmt.style}\n---\n")
    body = f"""# prefstream preference data: `{fmt.name}` ({fmt.style})

Written by the prefstream tap{f' from `{topic}`' if topic else ''}, for {TRAINERS[fmt.name]}. Every
row carries its provenance: record `id` (deterministic), `prompt_id`, `objective` (name@version),
`source`, `models`, `evaluators`.

| records | prompts | shards | updated |
| --- | --- | --- | --- |
| {stats.records} | {len(stats.prompts)} | {stats.shards} | {time.strftime('%Y-%m-%d %H:%M:%S %Z')} |
{_balance(stats)}
## Objective versions

{_table(stats.objectives, 'objective')}
## Models

{_table(stats.models, 'model')}
## Evaluators

{_table(stats.evaluators, 'evaluator')}
## Columns

| column | type |
| --- | --- |
{columns}

## Files and loading

`data/train-NNNNNN.parquet` and the same rows as `jsonl/shard-NNNNNN.jsonl` (tool calls kept there).

```python
from datasets import load_dataset
ds = load_dataset("parquet", data_dir="<this folder>")["train"]
```
"""
    return header + body
