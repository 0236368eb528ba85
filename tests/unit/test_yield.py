"""More pairs from a weak policy: the reference generator (an off-policy candidate, SPIN-style)
and adaptive sampling (a set with no pair draws more candidates), with a stub model."""
from __future__ import annotations

import asyncio

from agents import evaluate, instantiate, synthesize
from agents.backends.base import GenRequest, Generation
from agents.evaluators import build_evaluators
from schemas import (Curated, EvaluationSpec, EvaluatorSpec, GeneratorSpec, InstantiationSpec, ObjectiveSpec,
                     SynthesisSpec)
from streams.commands.serving.inputs import parse_line

GSM8K = {"question": "Sam has 5 pencils and buys 3 more. How many pencils does Sam have?",
         "answer": "Sam has 5 + 3 = 8 pencils.\n#### 8"}


class Policy:
    """A stub policy: answers 8 (right) from sample position ``right_from`` on, else 7."""

    backend, model = "stub", "stub"

    def __init__(self, right_from: int = 10**9) -> None:
        self.right_from, self.calls, self.first_seed = right_from, 0, None

    async def generate(self, req: GenRequest) -> list[Generation]:
        self.calls += 1
        self.first_seed = req.seed if self.first_seed is None else self.first_seed
        out = []
        for i in range(req.n):
            pos = req.seed + i - self.first_seed
            answer = 8 if pos >= self.right_from else 7
            out.append(Generation(text=f"Try {pos}: the answer is {answer}.\n#### {answer}", seed=req.seed + i))
        return out


class Stubs:
    def __init__(self, gen) -> None:
        self.gen = gen

    def get(self, spec):
        return self.gen


def objective(reference: bool, max_candidates: int | None = None) -> ObjectiveSpec:
    gens = [GeneratorSpec(backend="echo", model="stub")]
    if reference:
        gens.append(GeneratorSpec(backend="reference", model="reference"))
    return ObjectiveSpec(name="y", synthesis=SynthesisSpec(candidates=4, generators=gens, max_candidates=max_candidates),
                         evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]),
                         instantiation=InstantiationSpec(pairs="best_vs_worst"))


def run(obj: ObjectiveSpec, policy: Policy, line: dict = GSM8K, adaptive: bool = True):
    backends = Stubs(policy)
    curated = Curated(prompt=parse_line(line), objective=obj)
    [cands] = asyncio.run(synthesize.process(curated, backends))
    [judged] = asyncio.run(evaluate.process(cands.value, build_evaluators(None), backends if adaptive else None))
    *records, outcome = instantiate.process(judged.value)
    return cands.value, judged.value, [r.value for r in records], outcome.value


def test_reference_is_an_off_policy_candidate_beside_n_samples():
    cset, *_ = run(objective(reference=True), Policy())
    refs = [c for c in cset.candidates if c.model == "reference"]
    assert len(cset.candidates) == 5 and len(refs) == 1
    assert refs[0].off_policy and refs[0].text == GSM8K["answer"]
    assert not any(c.off_policy for c in cset.candidates if c.model != "reference")


def test_a_set_where_every_sample_is_wrong_still_pairs_against_the_reference():
    _, _, records, outcome = run(objective(reference=True), Policy())
    assert outcome.status == "records"
    [pair] = records
    line = pair.trl()
    assert line["model_chosen"] == "reference" and line["model_rejected"] == "stub" and line["off_policy"]
    assert pair.chosen_side.off_policy and not pair.rejected_side.off_policy
    _, _, none, outcome = run(objective(reference=False), Policy())
    assert none == [] and outcome.status == "no_pair"


def test_a_plain_answer_is_a_reference_and_a_prompt_without_one_adds_none():
    cset, *_ = run(objective(reference=True), Policy(), {"prompt": "What is 5 + 3?", "answer": "8"})
    [ref] = [c for c in cset.candidates if c.off_policy]
    assert ref.text.endswith("#### 8")
    cset, *_ = run(objective(reference=True), Policy(), {"prompt": "Name a colour."})
    assert len(cset.candidates) == 4 and not any(c.off_policy for c in cset.candidates)


def test_a_set_with_no_pair_draws_more_until_it_pairs():
    policy = Policy(right_from=6)  # the first 4 samples tie (all wrong); sample 6 is right
    _, judged, records, outcome = run(objective(reference=False, max_candidates=12), policy)
    assert outcome.status == "records" and len(records) == 1
    assert len(judged.judged) == 8  # two rounds of 4: it stopped once a pair qualified
    assert outcome.counts["extra_rounds"] == 1 and outcome.counts["extra_candidates"] == 4
    assert records[0].chosen[0].content.startswith("Try 6") or records[0].chosen[0].content.startswith("Try 7")
    # replayed, the same candidate ids (positions and seeds follow on from the first round)
    _, again, _, _ = run(objective(reference=False, max_candidates=12), Policy(right_from=6))
    assert [j.candidate.id for j in again.judged] == [j.candidate.id for j in judged.judged]
    assert len({j.candidate.sampling.seed for j in judged.judged}) == 8


def test_adaptive_sampling_stops_at_the_budget_and_is_off_without_one():
    _, judged, _, outcome = run(objective(reference=False, max_candidates=8), Policy())
    assert outcome.status == "no_pair" and len(judged.judged) == 8 and outcome.counts["extra_candidates"] == 4
    _, judged, _, outcome = run(objective(reference=False), Policy(right_from=6))
    assert outcome.status == "no_pair" and len(judged.judged) == 4 and "extra_rounds" not in outcome.counts


class Judges:
    """A pointwise judge that prefers long answers and a pairwise judge that prefers short ones
    (the pairwise one answers "A" when A is shorter): they disagree about every pair."""

    backend, model = "stub", "stub"

    def __init__(self) -> None:
        self.pointwise = 0

    async def generate(self, req: GenRequest) -> list[Generation]:
        text = req.prompt or ""
        if "<response>" in text.rsplit("</request>", 1)[-1] and "Score" in text[-40:]:
            self.pointwise += 1
            body = text.rsplit("<response>\n", 1)[-1].split("\n</response>")[0]
            n = min(10, len(body) // 4 + 1)
            return [Generation(text=f" {' '.join([str(n)] * 3)}\nReason: long.\n" if "Scores" in text[-20:] else f" {n}")]
        a = text.rsplit("[A]", 1)[-1] if "[A]" in text else ""
        return [Generation(text=" A" if len(a) < 40 else " B")]


def test_disputed_sets_get_a_second_reading_from_the_judge():
    from agents.evaluators import build_evaluators as build
    from schemas import Candidate, CandidateSet, Message, Prompt, Sampling

    judges = Judges()
    obj = ObjectiveSpec(name="d", principles=["a", "b", "c"], evaluation=EvaluationSpec(
        evaluators=[EvaluatorSpec(name="judge"), EvaluatorSpec(name="pairwise")], features=[], guards=[]))
    prompt = Prompt(id="p", messages=[Message(role="user", content="Say something.")])
    cands = [Candidate(id=f"c{i}", text=t, backend="stub", model="stub", sampling=Sampling(temperature=1, top_p=1,
                                                                                          max_tokens=8))
             for i, t in enumerate(["Hi.", "Hello there, a much longer answer than the first one."])]
    cset = CandidateSet(id="s", prompt=prompt, objective=obj, candidates=cands)
    [plain] = asyncio.run(evaluate.process(cset, build(Stubs(judges))))
    calls = judges.pointwise
    [again] = asyncio.run(evaluate.process(cset, build(Stubs(judges)), Stubs(judges)))
    assert plain.value.extra == {} and calls == 2
    assert again.value.extra == {"extra_readings": 1, "extra_judge_calls": 2} and judges.pointwise == 2 + 4
    judge = [s for s in again.value.judged[1].scores if s.evaluator == "judge"][0]
    assert "again:" in judge.rationale
    off = msgspec_replace(obj, evaluation=msgspec_replace(obj.evaluation, reread_disputed=False))
    [none] = asyncio.run(evaluate.process(msgspec_replace(cset, objective=off), build(Stubs(judges)), Stubs(judges)))
    assert none.value.extra == {}


def msgspec_replace(x, **kw):
    import msgspec

    return msgspec.structs.replace(x, **kw)


def test_the_report_counts_on_and_off_policy_pairs_apart():
    from types import SimpleNamespace

    from streams.commands.reports import figures as report_figures

    _, _, [spin], _ = run(objective(reference=True), Policy())
    _, _, [own], _ = run(objective(reference=False, max_candidates=12), Policy(right_from=6))
    own = msgspec_replace(own, objective=spin.objective)
    src = SimpleNamespace(records=[spin, own], judged=[], outcomes=[])
    [row] = report_figures.counts(src, report_figures.edges([spin.created_at, own.created_at], 2))["by_objective"]
    assert (row["pairs_on_policy"], row["pairs_off_policy"]) == (1, 1)
