import asyncio

from agents import synthesize
from agents.backends.echo import EchoGenerator
from schemas import Curated, FewShot, GeneratorSpec, Message, ObjectiveSpec, Prompt, SynthesisSpec


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
    text = synthesize.render_completion(PROMPT, spec)
    assert text.startswith("Be brief.\n\nQuestion: 1+1?\nAnswer: 2\n\n")
    assert text.endswith("Question: What is 2+3?\nAnswer:")


def test_process_writes_n_candidates_with_provenance():
    gens = [GeneratorSpec(backend="llamacpp", model="m1", temperature=0.7), GeneratorSpec(model="m2")]
    obj = ObjectiveSpec(name="o", synthesis=SynthesisSpec(candidates=4, generators=gens, prompting="chat"))
    backends = EchoBackends()
    [emit] = asyncio.run(synthesize.process(Curated(prompt=PROMPT, objective=obj), backends))
    cset = emit.value
    assert emit.topic == "candidates" and emit.key == "p1" and len(cset.candidates) == 4
    assert [c.model for c in cset.candidates] == ["m1", "m1", "m2", "m2"]
    assert cset.candidates[0].sampling.temperature == 0.7
    seeds = [c.sampling.seed for c in cset.candidates]
    assert len(set(seeds)) == 4
    assert len({c.id for c in cset.candidates}) == 4
    again = asyncio.run(synthesize.process(Curated(prompt=PROMPT, objective=obj), backends))[0].value
    assert [c.id for c in again.candidates] == [c.id for c in cset.candidates]
    assert again.id == cset.id
