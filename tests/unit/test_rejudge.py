"""`rejudge`'s selection: which stored sets it re-publishes, bound to what, and never twice."""
from __future__ import annotations

import msgspec
import pytest

from schemas import Candidate, CandidateSet, Message, ObjectiveSpec, Prompt, Sampling
from streams.commands import CliError
from streams.commands.rejudge import parse_since
from streams.commands.objectives.rejudge import rejudged_id, select


def cset(sid: str, pid: str, name: str = "o", version: int = 1, at: float = 100.0) -> CandidateSet:
    c = Candidate(id="c1", text="x", backend="echo", model="echo", sampling=Sampling(temperature=1, top_p=1,
                                                                                      max_tokens=4))
    return CandidateSet(id=sid, prompt=Prompt(id=pid, messages=[Message(role="user", content="q")]),
                        objective=ObjectiveSpec(name=name, version=version), candidates=[c, c], created_at=at)


V2 = ObjectiveSpec(name="o", version=2)


def test_select_binds_the_new_spec_names_the_first_set_and_skips_what_was_done():
    stored = [(cset("s-a", "p1"), 100.0), (cset("s-b", "p2"), 200.0), (cset("s-c", "p3", name="other"), 100.0),
              (cset("s-d", "p4", version=2), 100.0)]
    sel = select(stored, V2, "o@1")
    assert sorted(c.rejudged_from for c in sel.new) == ["s-a", "s-b"]
    new = sel.new[0]
    assert new.objective == V2 and new.id == rejudged_id(new.rejudged_from, "o@2") and new.candidates
    # re-published sets are stored too: a second selection publishes nothing, and a set re-judged
    # before (to another version) counts as its first set
    again = select(stored + [(c, 300.0) for c in sel.new], V2, "o@1")
    assert again.new == [] and sorted(again.done) == ["s-a", "s-b"]
    v3 = ObjectiveSpec(name="o", version=3)
    later = select(stored + [(c, 300.0) for c in sel.new], v3)
    assert sorted(c.rejudged_from for c in later.new) == ["s-a", "s-b", "s-d"]


def test_select_by_time_and_prompts():
    stored = [(cset("s-a", "p1"), 100.0), (cset("s-b", "p2"), 200.0)]
    assert [c.rejudged_from for c in select(stored, V2, since=150.0).new] == ["s-b"]
    assert [c.rejudged_from for c in select(stored, V2, prompt_ids={"p1"}).new] == ["s-a"]
    assert msgspec.json.decode(msgspec.json.encode(select(stored, V2).new[0]), type=CandidateSet).rejudged_from


def test_parse_since():
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2026-12-01T00:00") == parse_since("2026-12-01T00:00+00:00")
    with pytest.raises(CliError, match="ISO time"):
        parse_since("yesterday")


def test_the_target_version_must_exist_and_the_error_names_the_fix():
    from streams.commands.rejudge import _target
    from agents.objectives import Store

    v1 = ObjectiveSpec(name="o", version=1)
    store = Store(live={"o": V2}, versions={"o": {1: (v1, 0.0), 2: (V2, 0.0)}})
    assert _target(store, "o") == V2 and _target(store, "o@1") == v1
    with pytest.raises(CliError, match=r"o has no version 7 \(known: 1, 2\).*objective history o"):
        _target(store, "o@7")
    with pytest.raises(CliError, match="objective apply"):
        _target(store, "nope")


def test_a_dead_lettered_rejudged_set_counts_as_failed_not_pending():
    from schemas import DeadLetter
    from streams.commands.objectives.rejudge import failed

    sel = select([(cset("s-a", "p1"), 100.0), (cset("s-b", "p2"), 100.0)], V2)
    letter = DeadLetter(stage="evaluate", error_type="Rejected", error="bad", original=b"x", topic="t.candidates",
                        partition=0, offset=1, prompt_id="p2", created_at=500.0)
    assert failed([letter], sel, since=400.0) == {"s-b"}
    assert failed([letter], sel, since=600.0) == set()  # an older letter is not this run's
