"""Perturbations must actually degrade: the verifiers that pass the original fail the copy."""
import asyncio

from agents.evaluators import IFEvalVerifier, MathVerifier
from agents.synthesis.perturb import drop_constraint, perturb, truncate, wrong_answer
from schemas import Candidate, Sampling
from streams.commands.serving.inputs import read_prompts


def score(ev, prompt, text):
    c = Candidate(id="c", text=text, backend="x", model="x", sampling=Sampling(temperature=0, top_p=1, max_tokens=1))
    return asyncio.run(ev.score(prompt, [c], None))[0].value


def test_wrong_answer_fails_math_verification_on_real_gsm8k(data_dir):
    ev = MathVerifier()
    for p in read_prompts(data_dir / "gsm8k" / "train_first1000.jsonl", limit=100):
        ref = p.metadata["reference"]
        assert score(ev, p, ref) == 1.0
        bad = wrong_answer(ref, p)
        assert bad is not None and score(ev, p, bad) == 0.0, (ref, bad)


def test_drop_constraint_breaks_what_it_claims(data_dir):
    ev = IFEvalVerifier()
    prompts = {tuple(p.verification.instruction_id_list): p
               for p in read_prompts(data_dir / "ifeval" / "input_data.jsonl")}
    good = {("punctuation:no_comma",): "the sea is calm and the sky is grey today",
            ("change_case:english_lowercase",): "all of this is written in lowercase letters only"}
    for ids, text in good.items():
        p = prompts[ids]
        assert score(ev, p, text) == 1.0
        assert score(ev, p, drop_constraint(text, p)) < 1.0


def test_truncate_and_fallback_order():
    from schemas import Message, Prompt
    p = Prompt(id="x", messages=[Message(role="user", content="hi")])
    assert truncate("one two three four", p) == "one two"
    assert wrong_answer("42", p) is None  # no math verification: does not apply
    assert perturb("one two three four", p, ["wrong_answer", "drop_constraint", "truncate"]) == ("truncate", "one two")
    assert perturb("one", p, ["truncate"]) is None
