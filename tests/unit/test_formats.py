"""Training formats: every format's rows in both styles, against their Arrow schema, TRL's
own format detection, and OpenRLHF's documented keys."""
from __future__ import annotations

import pyarrow as pa
import pytest
from trl.data_utils import is_conversational

from agents import instantiate
from schemas import Candidate, InstantiationSpec, Judged, JudgedSet, Message, ObjectiveSpec, Prompt, Sampling, Score
from streams.commands import cli
from streams.commands.tap import formats
from streams.commands.tap.formats import FORMATS, STYLES, FormatError, get

PROMPT = Prompt(id="p1", source="gsm8k", messages=[Message(role="system", content="Be brief."),
                                                   Message(role="user", content="What is 2+3?")])


def records():
    """One judged set → every kind of record (pairs, unpaired, ranking, rewards)."""
    texts, scores = ["It is 5.", "It is 6.", "Maybe 7."], [1.0, 0.4, 0.0]
    js = [Judged(candidate=Candidate(id=f"c{i}", text=t, backend="echo", model=f"gen-{i}",
                                     sampling=Sampling(temperature=1, top_p=1, max_tokens=8)),
                 scores=[Score(evaluator="math", value=s), Score(evaluator="judge", value=None, kind="judge")],
                 score=s) for i, (t, s) in enumerate(zip(texts, scores))]
    spec = InstantiationSpec(pairs="all_pairs", kto=True, ranking=True, rewards=True)
    jset = JudgedSet(id="j", prompt=PROMPT, objective=ObjectiveSpec(name="o", version=7, instantiation=spec),
                     judged=js)
    return [e.value for e in instantiate.process(jset) if e.topic.short == "preferences"]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", FORMATS)
def test_rows_fit_their_schema_and_carry_provenance(name, style):
    fmt = get(name, style)
    rows = [row for r in records() if (row := fmt.row(r)) is not None]
    assert rows, f"{name} takes {fmt.kind} records"
    table = pa.Table.from_pylist(rows, schema=fmt.schema)
    assert table.num_rows == len(rows) and table.schema.names == list(rows[0])  # no column left out or added
    for row in rows:
        assert row["objective"] == "o@7" and row["prompt_id"] == "p1" and row["source"] == "gsm8k"
        assert row["id"].startswith("r-") and row["evaluators"] == ["math"]  # "judge" never scored
    assert len({r["id"] for r in rows}) == len(rows)
    assert fmt.features() is not None


@pytest.mark.parametrize("name", ["trl-dpo", "trl-kto", "trl-reward", "scalar"])
def test_trl_recognises_the_conversational_and_standard_variants(name):
    conv = next(filter(None, map(get(name).row, records())))
    std = next(filter(None, map(get(name, "standard").row, records())))
    assert is_conversational(conv) and not is_conversational(std)


def test_dpo_rows():
    pair = next(r for r in records() if r.kind == "pair" and r.margin == 1.0)
    row = get("trl-dpo").row(pair)
    assert row["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "It is 5."}]
    assert row["rejected"] == [{"role": "assistant", "content": "Maybe 7."}]
    assert (row["score_chosen"], row["score_rejected"], row["margin"]) == (1.0, 0.0, 1.0)
    assert row["models"] == ["gen-0", "gen-2"] and (row["model_chosen"], row["model_rejected"]) == ("gen-0", "gen-2")
    std = get("trl-dpo", "standard").row(pair)
    assert std["prompt"] == "\n\nSystem: Be brief.\n\nHuman: What is 2+3?\n\nAssistant:"
    assert (std["chosen"], std["rejected"]) == (" It is 5.", " Maybe 7.")
    assert get("trl-dpo").row(next(r for r in records() if r.kind == "unpaired")) is None


def test_kto_rows_have_a_boolean_label():
    rows = [get("trl-kto").row(r) for r in records() if r.kind == "unpaired"]
    assert sorted((row["completion"][0]["content"], row["label"]) for row in rows) == [("It is 5.", True),
                                                                                     ("Maybe 7.", False)]


def test_openrlhf_rows_use_its_default_keys():
    # OpenRLHF's reward/DPO dataset reads `chosen_key="chosen"`, `rejected_key="rejected"` and an
    # optional `margin` by default; with no --prompt_key (its default) chosen/rejected are whole
    # conversations, and its DPO takes chosen[:-1] as the prompt
    # (openrlhf/datasets/reward_dataset.py: preprocess_data; openrlhf/cli/train_rm.py arguments).
    pair = next(r for r in records() if r.kind == "pair")
    row = get("openrlhf").row(pair)
    assert {"prompt", "chosen", "rejected", "margin"} <= set(row)
    assert row["chosen"][:-1] == row["prompt"] == row["rejected"][:-1]
    assert row["chosen"][-1]["role"] == "assistant" and row["margin"] == pair.margin
    std = get("openrlhf", "standard").row(pair)
    assert std["chosen"].startswith(std["prompt"]) and std["chosen"] != std["rejected"]


def test_ranking_rows_are_best_first():
    [ranking] = [r for r in records() if r.kind == "ranking"]
    row = get("ranking", "standard").row(ranking)
    assert row["completions"] == [" It is 5.", " It is 6.", " Maybe 7."]
    assert row["scores"] == [1.0, 0.4, 0.0] and row["ranks"] == [1, 2, 3]
    assert row["models"] == ["gen-0", "gen-1", "gen-2"]


def test_unknown_formats_and_styles_are_refused_with_the_choices():
    with pytest.raises(FormatError, match="trl-dpo"):
        get("dpo")
    with pytest.raises(FormatError, match="standard"):
        get("trl-dpo", "chatml")
    assert cli.FORMAT_NAMES == ", ".join(formats.FORMATS)
