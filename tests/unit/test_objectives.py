"""Objectives without a broker: YAML, validation, diffs, versions, routing, the registry,
the run ledger per (prompt, objective), the shadow topic choice and `objective compare`."""
from __future__ import annotations

import asyncio

import msgspec
import pytest
import yaml

from agents import curate, instantiate
from schemas import (Candidate, EvaluationSpec, EvaluatorSpec, GeneratorSpec, InstantiationSpec, Judged,
                     JudgedSet, Message, ObjectiveSpec, Outcome, PreferenceRecord, Prompt, Sampling, Score, Side,
                     SynthesisSpec)
from schemas.objectives import RoutingSpec
from streams.commands.cli import main
from streams.commands.objectives.compare import compare
from agents.objectives.registry import ObjectiveRegistry
from agents.objectives import (MAX_OBJECTIVE_BYTES, ObjectiveError, Store, changed_fields, content, diff,
                                load_objective, parse_objective, problems, validate)
from streams.commands.run import Ledger
from streams.runtime import Rejected
from streams.settings import load

ECHO = ObjectiveSpec(name="echo", synthesis=SynthesisSpec(candidates=2, generators=[GeneratorSpec(backend="echo")]),
                     evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]))


def spec(**kw) -> ObjectiveSpec:
    return msgspec.structs.replace(ECHO, **kw)


def P(pid="p1", **kw) -> Prompt:
    return Prompt(id=pid, messages=[Message(role="user", content="What is 2+3?")], **kw)


# --- YAML, validation --------------------------------------------------------------------

def test_default_objective_and_template_parse_and_validate(capsys):
    default = load_objective()
    validate(default, load({}))
    assert main(["objective", "template"]) == 0
    printed = capsys.readouterr().out
    assert printed.lstrip().startswith("#")  # commented
    assert parse_objective(printed) == default
    assert default.routing == RoutingSpec()  # routing by name only: today's behaviour


def test_yaml_refusals_name_the_path():
    with pytest.raises(ObjectiveError, match=r"evaluators\[0\]\.name"):
        parse_objective("name: x\nevaluation: {evaluators: [{name: vibes}]}\n", "f.yaml")
    with pytest.raises(ObjectiveError, match="synthesis.strategy"):
        parse_objective("name: x\nsynthesis: {strategy: telepathy}\n")
    with pytest.raises(ObjectiveError, match="mapping"):
        parse_objective("- a list\n")
    with pytest.raises(ObjectiveError, match="not valid YAML"):
        parse_objective("name: [unclosed\n")


@pytest.mark.parametrize("bad,reason", [
    (dict(evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math", weight=0.0)])), "sum to <= 0"),
    (dict(evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math", weight=-1.0),
                                                EvaluatorSpec(name="ifeval", weight=2.0)])), "negative weight"),
    (dict(evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="vibes")])), "evaluators"),  # built in code
    (dict(synthesis=SynthesisSpec(strategy="telepathy")), "strategy"),
    (dict(synthesis=SynthesisSpec(candidates=1, generators=[GeneratorSpec(backend="echo")])), "at least 2"),
    (dict(synthesis=SynthesisSpec(generators=[])), "generators is empty"),
    (dict(synthesis=SynthesisSpec(generators=[GeneratorSpec(backend="openai", model="m")])), "no server"),
    (dict(routing=RoutingSpec(fraction=1.5)), "fraction"),
    (dict(name="has space"), "name"),
])
def test_invalid_specs_are_refused_with_the_reason(bad, reason):
    with pytest.raises(ObjectiveError, match=reason):
        validate(spec(**bad), load({}))


def test_openai_backend_is_configured_by_spec_or_settings():
    s = spec(synthesis=SynthesisSpec(generators=[GeneratorSpec(backend="openai", model="m")]))
    assert problems(s) == []  # no settings: configuration is not checked (the registry's view)
    validate(s, load({"PREFSTREAM_OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"}))
    validate(spec(synthesis=SynthesisSpec(generators=[GeneratorSpec(backend="openai", model="m",
                                                                    base_url="http://127.0.0.1:1/v1")])),
             load({"PREFSTREAM_ALLOWED_ENDPOINTS": "http://127.0.0.1:1"}))
    judged = spec(evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="judge")],
                                            judge=msgspec.structs.replace(EvaluationSpec().judge, backend="openai")))
    with pytest.raises(ObjectiveError, match="evaluation.judge"):
        validate(judged, load({}))


def test_content_diff_and_changed_fields_ignore_the_version():
    a, b = spec(version=1), spec(version=7)
    assert content(a) == content(b) and changed_fields(a, b) == []
    c = spec(version=2, instantiation=InstantiationSpec(min_margin=0.5), status="shadow")
    assert changed_fields(a, c) == ["instantiation.min_margin", "status"]
    d = diff(a, c, "new.yaml")
    assert "-  min_margin: 0.2" in d and "+  min_margin: 0.5" in d and "echo@1 (live)" in d
    assert "version" not in d


def test_next_version_is_above_every_known_version():
    assert Store({}, {}).next_version("x") == 1
    s = Store({"x": spec(name="x", version=3)}, {"x": {1: (spec(), 0.0), 5: (spec(), 0.0)}})
    assert s.next_version("x") == 6


# --- routing (curate) --------------------------------------------------------------------

def test_sampling_is_deterministic_nested_and_near_its_fraction():
    ids = [f"p-{i}" for i in range(4000)]
    tenth = {i for i in ids if curate.in_sample(i, 0.1)}
    fifth = {i for i in ids if curate.in_sample(i, 0.2)}
    assert tenth <= fifth  # raising the fraction keeps the prompts already sampled
    assert 0.08 < len(tenth) / len(ids) < 0.12 and 0.17 < len(fifth) / len(ids) < 0.23
    assert tenth == {i for i in ids if curate.in_sample(i, 0.1)}
    assert not any(curate.in_sample(i, 0.0) for i in ids) and all(curate.in_sample(i, 1.0) for i in ids)


def test_routing_by_tags_sources_and_fraction_narrows():
    math = spec(name="math", routing=RoutingSpec(tags=["math", "gsm"]))
    prod_math = spec(name="pm", routing=RoutingSpec(tags=["math"], sources=["prod"]))
    assert curate.matches(math, P(tags=["gsm"])) and not curate.matches(math, P(tags=["chat"]))
    assert curate.matches(prod_math, P(tags=["math"], source="prod"))
    assert not curate.matches(prod_math, P(tags=["math"], source="eval"))
    assert not curate.matches(spec(), P(tags=["math"]))  # no criterion: by name only
    assert not curate.matches(spec(status="retired", routing=RoutingSpec(fraction=1.0)), P())
    half = spec(name="half", routing=RoutingSpec(fraction=0.5))
    assert {curate.matches(half, P(f"p-{i}")) for i in range(50)} == {True, False}


def test_one_prompt_goes_to_several_objectives_each_with_its_own_curated_message():
    objs = {"default": spec(name="default", version=2), "echo": spec(version=4),
            "shadow": spec(name="shadow", status="shadow", routing=RoutingSpec(fraction=1.0)),
            "math": spec(name="math", routing=RoutingSpec(tags=["math"]))}
    emits = curate.process(P(objective="echo", tags=["math"]), objs, "default")
    assert [e.value.objective.ref for e in emits] == ["echo@4", "math@1", "shadow@1"]
    assert {e.key for e in emits} == {"p1"} and {e.topic.short for e in emits} == {"curated"}
    # naming none: an active routed objective replaces the default; a shadow does not
    assert [e.value.objective.ref for e in curate.process(P(tags=["math"]), objs, "default")] == ["math@1", "shadow@1"]
    assert [e.value.objective.ref for e in curate.process(P(), objs, "default")] == ["default@2", "shadow@1"]
    with pytest.raises(Rejected, match="unknown objective 'nope'"):
        curate.process(P(objective="nope"), objs, "default")


# --- registry, ledger, shadow topic, compare ---------------------------------------------

def test_registry_keeps_the_newest_valid_version():
    async def go():
        reg = ObjectiveRegistry()
        await reg.update(spec(version=2))
        await reg.update(spec(version=1))  # an older version read late
        await reg.update(spec(version=3, evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math",
                                                                                             weight=0)])))
        assert reg.get("echo").version == 2  # the invalid v3 is ignored; v2 stays live
        assert await reg.wait_for("echo", 0.05) is not None  # not caught up yet, but known
        assert await reg.wait_for("other", 0.05) is None
        reg.ready.set()
        waiter = asyncio.create_task(reg.wait_for("other", 5))
        await asyncio.sleep(0)
        await reg.update(spec(name="other"))
        assert (await waiter).name == "other"

    asyncio.run(go())


def test_ledger_counts_per_prompt_and_objective():
    ledger = Ledger({"p1"}, {"p1": "echo"})
    ledger.add_outcome(Outcome(prompt_id="p1", objective="shadow@1", status="records", record_ids=["r-x"]))
    assert ledger.done() == 0 and ("p1", "shadow") in ledger.other_outcomes
    ledger.add_outcome(Outcome(prompt_id="p1", objective="echo@2", status="no_pair", reason="tie"))
    assert ledger.done() == 1 and ledger.outcomes["p1"].objective == "echo@2"


def _judged(status: str) -> JudgedSet:
    def j(i, s):
        return Judged(candidate=Candidate(id=f"c{i}", text=f"t{i}", backend="echo", model="echo",
                                          sampling=Sampling(temperature=1, top_p=1, max_tokens=8)),
                      scores=[Score(evaluator="math", value=s)], score=s)
    return JudgedSet(id="j", prompt=P(), objective=spec(status=status), judged=[j(0, 1.0), j(1, 0.0)])


def test_shadow_records_go_to_their_own_topic():
    assert [e.topic.short for e in instantiate.process(_judged("active"))] == ["preferences", "outcomes"]
    assert [e.topic.short for e in instantiate.process(_judged("shadow"))] == ["preferences-shadow", "outcomes"]


def _rec(pid, ref, chosen, rejected, model="m", margin=1.0):
    side = Side(candidate_id="c", model=model, score=1.0)
    rid = f"r-{pid}-{ref}"
    return (PreferenceRecord(id=rid, prompt_id=pid, objective=ref, prompt=[], chosen=[Message(role="assistant",
                             content=chosen)], rejected=[Message(role="assistant", content=rejected)],
                             score_chosen=1.0, score_rejected=0.0, margin=margin, chosen_side=side,
                             rejected_side=side),
            Outcome(prompt_id=pid, objective=ref, status="records", record_ids=[rid]))


def test_compare_counts_agreement_on_prompts_both_saw():
    values = [*_rec("p1", "a@1", "x", "y"), *_rec("p1", "b@1", "x", "z"),  # same chosen
              *_rec("p2", "a@1", "x", "y"), *_rec("p2", "b@1", "y", "x", model="n"),  # reversed
              *_rec("p3", "a@1", "x", "y", margin=0.5),
              Outcome(prompt_id="p3", objective="b@1", status="no_pair", reason="tie"),
              Outcome(prompt_id="p4", objective="a@1", status="no_pair"),  # only a saw it
              Outcome(prompt_id="p1", objective="a@0", status="no_pair")]  # older version of a
    r = compare(values, "a", "b")
    assert (r["prompts_a"], r["prompts_b"], r["both"]) == (4, 3, 3)
    assert (r["both_pair"], r["a_only_pair"], r["neither_pair"]) == (2, 1, 0)
    assert (r["same_chosen"], r["reversed"], r["choice_agreement"]) == (1, 1, 0.5)
    assert r["pair_agreement"] == round(2 / 3, 4) and r["chosen_model_agreement"] == 0.5
    assert compare(values, "a@0", "b")["both"] == 1


def test_cli_refuses_invalid_file_before_touching_a_broker(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PREFSTREAM_BROKER", raising=False)
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"name": "x", "evaluation": {"evaluators": [{"name": "vibes"}]}}))
    assert main(["objective", "apply", str(f)]) == 2
    assert "vibes" in capsys.readouterr().err
    assert main(["objective", "compare", "a@x", "b"]) == 2
    assert "NAME@VERSION" in capsys.readouterr().err


def _alias_bomb(levels: int, fan: int = 9) -> str:
    """A 'billion laughs': each anchor a list of ``fan`` aliases of the one before."""
    lines = ["name: bomb", 'a0: &a0 ["lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]")
    return "\n".join(lines) + "\n"


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    # 6 levels: ~60k nodes once expanded (small enough that an unguarded parser returns, slowly);
    # the 504-byte bomb had 9 and took 64 s and 1.5 GiB
    with pytest.raises(ObjectiveError, match="anchors and aliases"):
        parse_objective(_alias_bomb(6), "bomb.yaml")
    with pytest.raises(ObjectiveError, match="anchors and aliases"):
        parse_objective("name: x\nprinciples: &p [a]\n")  # an anchor alone is refused too
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(6))
    with pytest.raises(ObjectiveError, match="bomb.yaml.*anchors and aliases"):
        load_objective(path)


def test_an_objective_over_the_size_cap_is_refused_with_the_limit(tmp_path):
    big = "name: big\nprinciples:\n" + "".join(f"  - principle {i} {'x' * 60}\n" for i in range(4000))
    assert len(big) > MAX_OBJECTIVE_BYTES
    with pytest.raises(ObjectiveError, match=f"over the {MAX_OBJECTIVE_BYTES}-byte limit"):
        parse_objective(big)
    path = tmp_path / "big.yaml"
    path.write_text(big)
    with pytest.raises(ObjectiveError, match="big.yaml.*byte limit"):
        load_objective(path)
