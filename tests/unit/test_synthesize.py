import asyncio

from agents import synthesize
from agents.synthesis.prompting import render_completion
from agents.backends.echo import EchoGenerator
from schemas import Curated, FewShot, GeneratorSpec, Message, ObjectiveSpec, Prompt, SynthesisSpec, Verification


class EchoBackends:
    """Hands out the built-in echo generator for every spec (no model needed)."""

    def __init__(self):
        self.asked = []

    def get(self, spec):
        self.asked.append(spec.model)
        return EchoGenerator(spec.model)


PROMPT = Prompt(id="p1", messages=[Message(role="system", content="Be brief."),
                                   Message(role="user", content="What is 2+3?")])


def test_plan_counts_then_weights():
    a, b, c = GeneratorSpec(model="a", count=1), GeneratorSpec(model="b", weight=3), GeneratorSpec(model="c")
    planned = synthesize.plan(SynthesisSpec(candidates=5, generators=[a, b, c]))
    assert [g.model for g in planned] == ["a", "b", "b", "b", "c"]
    assert len(synthesize.plan(SynthesisSpec(candidates=4, generators=[GeneratorSpec()]))) == 4


def test_render_completion_is_few_shot_question_answer():
    spec = SynthesisSpec(prompting="completion", few_shot=[FewShot(question="1+1?", answer="2")])
    text = render_completion(PROMPT, spec)
    assert text.startswith("Be brief.\n\nQuestion: 1+1?\nAnswer: 2\n\n")
    assert text.endswith("Question: What is 2+3?\nAnswer:")


def test_process_writes_n_candidates_with_provenance():
    gens = [GeneratorSpec(backend="llamacpp", model="m1", temperature=0.7), GeneratorSpec(model="m2")]
    obj = ObjectiveSpec(name="o", synthesis=SynthesisSpec(candidates=4, generators=gens, prompting="chat"))
    backends = EchoBackends()
    [emit] = asyncio.run(synthesize.process(Curated(prompt=PROMPT, objective=obj), backends))
    cset = emit.value
    assert emit.topic.short == "candidates" and emit.key == "p1" and len(cset.candidates) == 4
    assert [c.model for c in cset.candidates] == ["m1", "m1", "m2", "m2"]
    assert cset.candidates[0].sampling.temperature == 0.7
    seeds = [c.sampling.seed for c in cset.candidates]
    assert len(set(seeds)) == 4
    assert len({c.id for c in cset.candidates}) == 4
    again = asyncio.run(synthesize.process(Curated(prompt=PROMPT, objective=obj), backends))[0].value
    assert [c.id for c in again.candidates] == [c.id for c in cset.candidates]
    assert again.id == cset.id


class Recording(EchoGenerator):
    def __init__(self, model, log):
        super().__init__(model)
        self.log = log

    async def generate(self, req):
        self.log.append(req)
        return await super().generate(req)


class RecordingBackends:
    def __init__(self):
        self.requests = []

    def get(self, spec):
        return Recording(spec.model, self.requests)


def run_strategy(strategy, prompt=PROMPT, n=4, **spec_kw):
    obj = ObjectiveSpec(name="o", principles=["Be correct.", "Be brief."],
                        synthesis=SynthesisSpec(strategy=strategy, candidates=n, prompting="chat", **spec_kw))
    backends = RecordingBackends()
    [emit] = asyncio.run(synthesize.process(Curated(prompt=prompt, objective=obj), backends))
    return emit.value.candidates, backends.requests


def test_contrastive_sends_positive_and_negative_system_prompts_and_records_intent():
    cands, reqs = run_strategy("contrastive")
    assert [c.intent for c in cands] == ["positive", "positive", "negative", "negative"]
    systems = [r.messages[0].content for r in reqs]
    assert any("Follow every one" in s and "Be correct." in s for s in systems)
    assert any("Break these principles" in s for s in systems)
    assert all(r.messages[0].role == "system" for r in reqs)


def test_revise_emits_draft_and_revision_with_critique_provenance():
    cands, reqs = run_strategy("revise", n=2)
    draft, rev = cands
    assert (draft.intent, rev.intent, rev.parent) == ("draft", "revision", draft.id)
    assert rev.critique.startswith("[Be ")
    assert "Critique:" in reqs[1].prompt and "Rewrite the response" in reqs[2].prompt
    assert draft.text in reqs[2].prompt


def test_revise_runs_the_drafts_chains_side_by_side_with_the_sequential_positions():
    state = {"now": 0, "max": 0, "critiques": 0}
    both = asyncio.Event()

    class Slow(EchoGenerator):
        async def generate(self, req):
            if req.prompt and "Critique:" in req.prompt:  # each critique waits for the other (or 2 s)
                state["critiques"] += 1
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
                if state["critiques"] == 2:
                    both.set()
                try:
                    await asyncio.wait_for(both.wait(), 2.0)
                except asyncio.TimeoutError:
                    pass
                state["now"] -= 1
            return await super().generate(req)

    class Backends:
        def get(self, spec):
            return Slow(spec.model)

    obj = ObjectiveSpec(name="o", principles=["Be correct."],
                        synthesis=SynthesisSpec(strategy="revise", candidates=4, prompting="chat"))
    [emit] = asyncio.run(synthesize.process(Curated(prompt=PROMPT, objective=obj), Backends()))
    cands = emit.value.candidates
    assert state["max"] == 2  # both critiques in flight together
    seed = synthesize.base_seed(PROMPT.id, obj.ref, 0)
    # drafts at positions 0, 1; draft i's critique at 2 + 2i and its revision at 3 + 2i, as
    # when the chains ran one after another (so replayed ids and seeds are unchanged)
    assert [c.intent for c in cands] == ["draft", "draft", "revision", "revision"]
    assert [c.sampling.seed for c in cands] == [seed, seed + 1, seed + 3, seed + 5]
    assert [c.parent for c in cands[2:]] == [cands[0].id, cands[1].id]
    again = asyncio.run(synthesize.process(Curated(prompt=PROMPT, objective=obj), Backends()))[0].value
    assert [c.id for c in again.candidates] == [c.id for c in cands]


def test_perturb_pairs_each_original_with_a_degraded_copy():
    p = Prompt(id="p2", messages=[Message(role="user", content="What is 2+3?")],
               verification=Verification(kind="math", answer="5"))
    cands, _ = run_strategy("perturb", prompt=p)
    originals = [c for c in cands if c.intent == "original"]
    perturbed = [c for c in cands if c.intent == "perturbed"]
    assert len(originals) == 2 and len(perturbed) == 2
    assert {c.parent for c in perturbed} == {c.id for c in originals}
    assert all(c.model == "perturb:wrong_answer" for c in perturbed)


def test_production_response_joins_as_a_candidate():
    p = Prompt(id="p3", messages=PROMPT.messages, metadata={"production_response": "It is 5.",
                                                             "production_model": "prod-llm"})
    cands, _ = run_strategy("samples", prompt=p, n=2)
    assert [c.intent for c in cands] == [None, None, "production"]
    assert cands[-1].text == "It is 5." and cands[-1].model == "prod-llm"


def test_multi_turn_history_with_tool_calls_renders_as_a_transcript():
    p = Prompt(id="p4", messages=[
        Message(role="user", content="What is 17*23?"),
        Message(role="assistant", content="", tool_calls=[{"id": "t1", "type": "function", "function": {
            "name": "calc", "arguments": "{\"expr\": \"17*23\"}"}}]),
        Message(role="tool", name="calc", tool_call_id="t1", content="391"),
    ])
    text = render_completion(p, SynthesisSpec(prompting="completion"))
    assert text.endswith("User: What is 17*23?\nAssistant: [calls calc({\"expr\": \"17*23\"})]\n"
                         "Tool result (calc): 391\nAssistant:")
    cands, reqs = run_strategy("samples", prompt=p, n=1)
    assert [m.role for m in reqs[0].messages] == ["user", "assistant", "tool"]
