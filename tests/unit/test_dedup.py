"""Near-duplicate prompts: MinHash estimates, the real embedding model, the bounded index per
objective, and curate's dropped outcomes that say why."""
from __future__ import annotations

import random

import numpy as np
import pytest

from agents import curate
from agents.dedup import DedupIndex, Embedder, MinHasher, prompt_text
from schemas import Message, ObjectiveSpec, Prompt
from schemas.objectives import CurationSpec, DedupSpec, RoutingSpec


@pytest.fixture(scope="module")
def embedder():
    e = Embedder()
    e.load()
    return e


def P(pid: str, text: str, **kw) -> Prompt:
    return Prompt(id=pid, messages=[Message(role="system", content="You are helpful."),
                                    Message(role="user", content=text)], **kw)


def long_text(seed: int, n: int = 400) -> str:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(2000)]
    return " ".join(rng.choice(vocab) for _ in range(n))


def true_jaccard(h: MinHasher, a: str, b: str) -> float:
    x, y = h.shingles(a), h.shingles(b)
    return len(x & y) / len(x | y)


def test_minhash_estimates_jaccard_within_its_error():
    h = MinHasher()
    base = long_text(1).split()
    for edits in (5, 20, 60, 200):
        other = list(base)
        rng = random.Random(edits)
        for i in rng.sample(range(len(other)), edits):
            other[i] = "zz"
        a, b = " ".join(base), " ".join(other)
        est = MinHasher.jaccard(h.signature(a), h.signature(b))
        # 128 permutations: standard error sqrt(J(1-J)/128) <= 0.045; allow 3 of them
        assert abs(est - true_jaccard(h, a, b)) < 0.14, edits
    assert MinHasher.jaccard(h.signature(long_text(1)), h.signature(long_text(2))) < 0.05


def test_prompt_text_is_the_user_turns_normalised():
    p = P("p", "  What IS\n 2+3? ")
    assert prompt_text(p) == "what is 2+3?"


def test_embedding_index_finds_paraphrases_but_not_other_questions(embedder):
    idx = DedupIndex(DedupSpec(mode="near", threshold=0.9), embedder)
    texts = {"a": "how many eggs are in three boxes of twelve eggs?",
             "b": "how many eggs are in 3 boxes of 12 eggs?",
             "c": "write a haiku about the autumn sea."}
    dup, key = idx.find("a", texts["a"])
    assert dup is None
    idx.add("a", key)
    dup, _ = idx.find("b", texts["b"])
    assert dup is not None and dup.of == "a" and dup.how == "embedding" and dup.similarity >= 0.9
    assert "near duplicate of a (cosine" in dup.reason
    assert idx.find("c", texts["c"])[0] is None


def test_long_texts_go_through_minhash_and_the_window_forgets_the_oldest(embedder):
    idx = DedupIndex(DedupSpec(mode="near", long_chars=200, window=3), embedder)
    for i in range(4):
        dup, key = idx.find(f"p{i}", long_text(i))
        assert dup is None
        idx.add(f"p{i}", key)
    assert len(idx.sigs) == 3 and "p0" not in idx.sigs
    assert all("p0" not in bucket for bucket in idx.bands.values())
    near = long_text(3).replace("w1", "w2", 3)
    dup, _ = idx.find("q", near)
    assert dup is not None and dup.of == "p3" and dup.how == "minhash"
    assert idx.find("q0", long_text(0))[0] is None  # forgotten: it falls out of the window


def _objs(**dedup):
    return {"default": ObjectiveSpec(name="default", curation=CurationSpec(dedup=DedupSpec(**dedup)))}


def test_curate_drops_duplicates_with_an_outcome_that_says_why_and_replays_keep_their_decision(embedder):
    objs = _objs(mode="near", threshold=0.9)
    state = curate.CurateState(embedder=embedder)
    first = curate.process(P("p1", "How many eggs are in three boxes of twelve eggs?"), objs, "default", state)
    again = curate.process(P("p2", "how many eggs are in three  boxes of twelve eggs?"), objs, "default", state)
    para = curate.process(P("p3", "How many eggs are in 3 boxes of 12 eggs?"), objs, "default", state)
    other = curate.process(P("p4", "Name three rivers in Europe."), objs, "default", state)
    assert [e.topic.short for e in first + other] == ["curated", "curated"]
    for emits, how in ((again, "the same text"), (para, "cosine")):
        [e] = emits
        assert e.topic.short == "outcomes" and e.value.status == "dropped" and e.value.objective == "default@1"
        assert e.value.reason.startswith("duplicate of p1" if how == "the same text" else "near duplicate of p1")
        assert how in e.value.reason and e.value.counts == {"duplicate": 1}
    # at-least-once delivery: the same prompt id again gets the same decision, not "duplicate of itself"
    [replay] = curate.process(P("p1", "How many eggs are in three boxes of twelve eggs?"), objs, "default", state)
    assert replay.topic.short == "curated"
    [replay] = curate.process(P("p3", "How many eggs are in 3 boxes of 12 eggs?"), objs, "default", state)
    assert replay.topic.short == "outcomes"


def test_dedup_is_per_objective_with_its_own_threshold(embedder):
    objs = {"strict": ObjectiveSpec(name="strict", routing=RoutingSpec(tags=["math"]),
                                    curation=CurationSpec(dedup=DedupSpec(mode="near", threshold=0.99))),
            "loose": ObjectiveSpec(name="loose", routing=RoutingSpec(tags=["math"]),
                                   curation=CurationSpec(dedup=DedupSpec(mode="near", threshold=0.8)))}
    state = curate.CurateState(embedder=embedder)
    curate.process(P("p1", "How many eggs are in three boxes of twelve eggs?", tags=["math"]), objs, "x", state)
    emits = curate.process(P("p2", "How many eggs are in 3 boxes of 12 eggs?", tags=["math"]), objs, "x", state)
    by_objective = {e.value.objective.name if e.topic.short == "curated" else e.value.objective: e.topic.short for e in emits}
    assert by_objective == {"loose@1": "outcomes", "strict": "curated"}


def test_exact_mode_needs_no_model_and_off_keeps_everything():
    state = curate.CurateState(embedder=None)  # exact: never touches the embedding model
    exact = _objs(mode="exact")
    curate.process(P("p1", "Same question?"), exact, "default", state)
    [e] = curate.process(P("p2", "same   QUESTION?"), exact, "default", state)
    assert e.topic.short == "outcomes" and "duplicate of p1" in e.value.reason
    off = curate.CurateState(embedder=None)
    for pid in ("p1", "p2"):
        [e] = curate.process(P(pid, "Same question?"), _objs(), "default", off)
        assert e.topic.short == "curated"


def test_embeddings_are_unit_length(embedder):
    v = embedder.encode(["a", "b c"])
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
