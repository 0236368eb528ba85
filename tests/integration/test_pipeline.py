"""The whole pipeline on a real broker with the real CPU model and real verifiers."""
from __future__ import annotations

import asyncio
import json

import msgspec
import pytest

from agents.evaluators import IFEvalVerifier, MathVerifier
from schemas import Candidate, InstantiationSpec, Sampling
from streams.commands.serving.inputs import read_prompts
from agents.objectives import load_objective
from streams.commands.run import run
from tests.conftest import settings_env

pytestmark = pytest.mark.model


def verifier_score(prompt, text: str) -> float:
    cand = Candidate(id="c", text=text, backend="x", model="x",
                     sampling=Sampling(temperature=0, top_p=1, max_tokens=1))
    ev = MathVerifier() if prompt.verification.kind == "math" else IFEvalVerifier()
    [score] = asyncio.run(ev.score(prompt, [cand], None))
    return score.value


def test_gsm8k_and_ifeval_end_to_end(settings, data_dir, tmp_path):
    prompts = (list(read_prompts(data_dir / "gsm8k" / "train_first1000.jsonl", limit=20))
               + list(read_prompts(data_dir / "ifeval" / "input_data.jsonl", limit=20)))
    spec = load_objective()
    spec = msgspec.structs.replace(
        spec, synthesis=msgspec.structs.replace(spec.synthesis, candidates=3),
        instantiation=InstantiationSpec(min_margin=0.2))
    out = tmp_path / "out"
    summary = run(settings, prompts, spec, out, env=settings_env(settings), progress=False)

    # prompts and outcomes balance: none vanished
    assert summary["prompts"] == 40
    pair_prompts = {json.loads(line)["prompt_id"] for line in (out / "preferences.jsonl").open()}
    assert summary["pairs"] == len(pair_prompts)
    assert summary["pairs"] + summary["no_pair"] + summary["dead_letters"] == 40
    assert summary["dead_letters"] == 0
    # 3 samples each, the reference answer beside them on the 20 GSM8K prompts, and where a set
    # made no pair, more samples (adaptive sampling: 3 at a time up to max_candidates, 8)
    assert 3 * 40 + 20 <= summary["candidates"] <= 8 * 40 + 20
    assert summary["objective"] == "default@1"
    assert json.loads((out / "summary.json").read_text()) == summary

    # every record: the verifiers, run again here, never rank rejected above chosen (the
    # objective aggregates verifiers_first: the judge only breaks a verifier tie), and the
    # aggregate score puts chosen at least the margin above rejected
    by_id = {p.id: p for p in prompts}
    records = [json.loads(line) for line in (out / "preferences.jsonl").open()]
    assert records, "40 real prompts with 3 samples each should yield at least one pair"
    for r in records:
        p = by_id[r["prompt_id"]]
        chosen, rejected = verifier_score(p, r["chosen"][0]["content"]), verifier_score(p, r["rejected"][0]["content"])
        assert chosen >= rejected and r["margin"] >= 0.2 - 1e-9, r
        assert r["margin"] == pytest.approx(r["score_chosen"] - r["score_rejected"], abs=1e-6)
        assert r["prompt"] == [{"role": m.role, "content": m.content} for m in p.messages]
        assert r["objective"] == "default@1" and r["model_chosen"] and r["model_rejected"]
    assert len({r["id"] for r in records}) == len(records)
