"""Training formats: the rows a trainer reads, made from preference records.

| format | record kind | trainer columns |
| --- | --- | --- |
| ``trl-dpo`` | pair | ``prompt``, ``chosen``, ``rejected`` (TRL preference type: DPOTrainer) |
| ``trl-kto`` | unpaired | ``prompt``, ``completion``, ``label`` (TRL unpaired preference type: KTOTrainer, BCO) |
| ``trl-reward`` | pair | ``prompt``, ``chosen``, ``rejected``, ``margin`` (RewardTrainer; it subtracts ``margin`` in its loss) |
| ``openrlhf`` | pair | ``chosen``, ``rejected``, ``margin``, ``prompt`` (OpenRLHF's reward/DPO datasets, default keys) |
| ``ranking`` | ranking | ``prompt``, ``completions`` (best first), ``scores``, ``ranks`` |
| ``scalar`` | reward | ``prompt``, ``completion``, ``reward`` |

Each comes in TRL's two styles: ``conversational`` (lists of ``{"role", "content"}``
turns) and ``standard`` (plain strings). The standard rendering is Anthropic HH's, as TRL's
standard preference examples use: the prompt is ``"\\n\\nHuman: …\\n\\nAssistant:"`` and a
completion continues it (``" …"``). Every row also carries provenance: ``id`` (the record
id, deterministic), ``prompt_id``, ``objective`` (name@version), ``source``, ``models`` and
``evaluators``; ``supersedes`` names the record a row replaces (a late label re-scored its set;
the tap drops the replaced row, ``streams.commands.tap.supersede``); ``policy`` the policy version
that wrote it (``name@version``, null for fixed models). Trainers drop columns they do not use.

In Parquet a turn holds ``role`` and ``content``; tool calls stay in the JSONL rows.

Agent trajectories: a step-level record's prompt is the trajectory before the step (user,
assistant turns with ``tool_calls``, ``tool`` results with the tool's ``name``) and chosen /
rejected are the two next actions, each one assistant turn (a tool call or a final answer),
as TRL's tool-calling conversations hold them; ``step`` says at which turn it branches. In the
standard style a tool call is written ``[calls name(arguments)]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import pyarrow as pa

from schemas import Message, PreferenceRecord, RankingRecord, RewardRecord, Side, UnpairedRecord
from schemas.preferences import message_dict

STYLES = ("conversational", "standard")
ROLES = {"user": "Human", "assistant": "Assistant", "system": "System", "tool": "Tool"}
CHAT = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
STR, F64 = pa.string(), pa.float64()
PROVENANCE = [("id", STR), ("prompt_id", STR), ("objective", STR), ("source", STR),
              ("models", pa.list_(STR)), ("evaluators", pa.list_(STR)), ("step", pa.int64()), ("difficulty", STR),
              ("supersedes", STR), ("policy", STR)]


class FormatError(ValueError):
    pass


def _turn_text(m: Message, strip: bool = False) -> str:
    """A turn's text, its tool calls written out (``[calls calc({"expr": "3 * 12"})]``)."""
    text = (m.content or "").strip() if strip else (m.content or "")
    if not m.tool_calls:
        return text
    calls = "; ".join(f"{c.get('function', {}).get('name', '?')}({c.get('function', {}).get('arguments', '')})"
                      for c in m.tool_calls)
    return f"{text} [calls {calls}]" if text.strip() else f"[calls {calls}]"


def render_prompt(messages: list[Message]) -> str:
    """Standard style: the turns as HH-style text, ending where the answer begins."""
    return "".join(f"\n\n{ROLES[m.role]}: {_turn_text(m)}" for m in messages) + "\n\nAssistant:"


def render_completion(messages: list[Message]) -> str:
    return " " + "\n\n".join(_turn_text(m, strip=True) for m in messages)


def _turns(messages: list[Message], style: str):
    return [message_dict(m) for m in messages] if style == "conversational" else render_prompt(messages)


def _answer(messages: list[Message], style: str):
    return [message_dict(m) for m in messages] if style == "conversational" else render_completion(messages)


def _provenance(r, sides: list[Side]) -> dict:
    evaluators = sorted({s.evaluator for side in sides for s in side.scores if s.value is not None})
    models = list(dict.fromkeys(side.model for side in sides))
    return {"id": r.id, "prompt_id": r.prompt_id, "objective": r.objective, "source": r.source,
            "models": models, "evaluators": evaluators, "step": r.step, "difficulty": r.difficulty,
            "supersedes": r.supersedes, "policy": r.policy}


def dpo_row(r: PreferenceRecord, style: str) -> dict:
    return {"prompt": _turns(r.prompt, style), "chosen": _answer(r.chosen, style),
            "rejected": _answer(r.rejected, style), "score_chosen": r.score_chosen,
            "score_rejected": r.score_rejected, "margin": r.margin, "model_chosen": r.chosen_side.model,
            "model_rejected": r.rejected_side.model, **_provenance(r, [r.chosen_side, r.rejected_side])}


def reward_model_row(r: PreferenceRecord, style: str) -> dict:
    return {"prompt": _turns(r.prompt, style), "chosen": _answer(r.chosen, style),
            "rejected": _answer(r.rejected, style), "margin": r.margin, "score_chosen": r.score_chosen,
            "score_rejected": r.score_rejected, **_provenance(r, [r.chosen_side, r.rejected_side])}


def openrlhf_row(r: PreferenceRecord, style: str) -> dict:
    # OpenRLHF's reward/DPO dataset (openrlhf/datasets/reward_dataset.py, preprocess_data; the
    # train_rm/train_dpo defaults --chosen_key chosen --rejected_key rejected, --prompt_key unset)
    # reads `chosen` and `rejected` as whole conversations (with --apply_chat_template, DPO takes
    # chosen[:-1] as the prompt) or whole texts, and `margin` where present. So chosen/rejected
    # here include the prompt; `prompt` is there for filtering — leave --prompt_key unset.
    if style == "conversational":
        chosen = _turns(r.prompt, style) + _answer(r.chosen, style)
        rejected = _turns(r.prompt, style) + _answer(r.rejected, style)
    else:
        chosen = render_prompt(r.prompt) + render_completion(r.chosen)
        rejected = render_prompt(r.prompt) + render_completion(r.rejected)
    return {"prompt": _turns(r.prompt, style), "chosen": chosen, "rejected": rejected, "margin": r.margin,
            **_provenance(r, [r.chosen_side, r.rejected_side])}


def kto_row(r: UnpairedRecord, style: str) -> dict:
    return {"prompt": _turns(r.prompt, style), "completion": _answer(r.completion, style), "label": r.label,
            "score": r.side.score, "model": r.side.model, **_provenance(r, [r.side])}


def ranking_row(r: RankingRecord, style: str) -> dict:
    prov = _provenance(r, [x.side for x in r.ranked])
    prov["models"] = [x.side.model for x in r.ranked]  # one per completion, in rank order
    return {"prompt": _turns(r.prompt, style), "completions": [_answer(x.completion, style) for x in r.ranked],
            "scores": [x.side.score for x in r.ranked], "ranks": [x.rank for x in r.ranked], **prov}


def scalar_row(r: RewardRecord, style: str) -> dict:
    return {"prompt": _turns(r.prompt, style), "completion": _answer(r.completion, style), "reward": r.reward,
            "model": r.side.model, **_provenance(r, [r.side])}


def _text(style: str):
    return CHAT if style == "conversational" else STR


def _columns(name: str, style: str) -> list[tuple[str, pa.DataType]]:
    t = _text(style)
    pair = [("prompt", t), ("chosen", t), ("rejected", t)]
    scores = [("score_chosen", F64), ("score_rejected", F64)]
    return {
        "trl-dpo": pair + scores + [("margin", F64), ("model_chosen", STR), ("model_rejected", STR)],
        "trl-reward": pair + [("margin", F64)] + scores,
        "openrlhf": pair + [("margin", F64)],
        "trl-kto": [("prompt", t), ("completion", t), ("label", pa.bool_()), ("score", F64), ("model", STR)],
        "ranking": [("prompt", t), ("completions", pa.list_(t)), ("scores", pa.list_(F64)),
                    ("ranks", pa.list_(pa.int64()))],
        "scalar": [("prompt", t), ("completion", t), ("reward", F64), ("model", STR)],
    }[name] + PROVENANCE


BUILDERS: dict[str, tuple[str, Callable]] = {
    "trl-dpo": ("pair", dpo_row),
    "trl-kto": ("unpaired", kto_row),
    "trl-reward": ("pair", reward_model_row),
    "openrlhf": ("pair", openrlhf_row),
    "ranking": ("ranking", ranking_row),
    "scalar": ("reward", scalar_row),
}
FORMATS = tuple(BUILDERS)


@dataclass(frozen=True)
class Format:
    name: str
    style: str = "conversational"

    @property
    def kind(self) -> str:
        """The record kind this format is made from."""
        return BUILDERS[self.name][0]

    def row(self, record) -> dict | None:
        """The trainer's row for ``record``, or ``None`` for a record of another kind."""
        if getattr(record, "kind", None) != self.kind:
            return None
        return BUILDERS[self.name][1](record, self.style)

    @cached_property
    def schema(self) -> pa.Schema:
        return pa.schema(_columns(self.name, self.style))

    def features(self):
        """The ``datasets.Features`` of the rows (for ``IterableDataset``)."""
        from datasets import Features

        return Features.from_arrow_schema(self.schema)


def get(name: str, style: str = "conversational") -> Format:
    if name not in BUILDERS:
        raise FormatError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    if style not in STYLES:
        raise FormatError(f"unknown style {style!r}; choose conversational or standard")
    return Format(name, style)
