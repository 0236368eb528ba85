import msgspec
import pytest

from schemas import CandidateSet, Curated, Message, ObjectiveSpec, Prompt, Verification, prompt_id
from streams.topics import Topics


def test_every_topic_roundtrips_its_type_and_refuses_others():
    topics = Topics("ns")
    p = Prompt(id="p1", messages=[Message(role="user", content="hi")],
               verification=Verification(kind="math", answer="3"))
    spec = ObjectiveSpec(name="o")
    c = Curated(prompt=p, objective=spec)
    assert topics.prompts.codec.decode(topics.prompts.codec.encode(p)) == p
    assert topics.curated.codec.decode(topics.curated.codec.encode(c)) == c
    with pytest.raises(msgspec.ValidationError, match="prompt.v1"):
        topics.curated.codec.decode(topics.prompts.codec.encode(p))


def test_tags_are_versioned_and_structs_frozen():
    p = Prompt(id="p1", messages=[Message(role="user", content="hi")])
    assert msgspec.json.decode(msgspec.json.encode(p))["type"] == "prompt.v1"
    with pytest.raises(AttributeError):
        p.id = "other"


def test_decode_error_names_the_path():
    with pytest.raises(msgspec.ValidationError, match=r"\$\.messages\[0\]\.role"):
        Topics().prompts.codec.decode(b'{"type":"prompt.v1","id":"x","messages":[{"role":"bot"}]}')


def test_prompt_id_is_content_derived():
    a = [Message(role="user", content="same")]
    assert prompt_id(a, "s") == prompt_id(list(a), "s")
    assert prompt_id(a, "s") != prompt_id(a, "other")
    assert prompt_id(a, "s") != prompt_id([Message(role="user", content="diff")], "s")


def test_objective_spec_is_encoded_with_every_field():
    data = msgspec.json.decode(msgspec.json.encode(ObjectiveSpec(name="o")))
    assert data["instantiation"]["min_margin"] == ObjectiveSpec(name="o").instantiation.min_margin
    assert "generators" in data["synthesis"]


def test_namespaced_topic_names():
    t = Topics("acme")
    assert t.prompts.name == "acme.prompts" and t.deadletters.name == "acme.deadletters"
    assert t.objectives.partitions == 1 and t.objectives.spec.compacted
    with pytest.raises(ValueError):
        Topics("bad name")
    assert CandidateSet in {x.spec.value_type for x in t}


def test_stable_id_is_the_hash_of_each_parts_json_followed_by_a_separator():
    """Ids must not change between releases (replays across an upgrade dedupe at the tap)."""
    import hashlib

    from schemas import stable_id

    for parts in [(), ("p-1",), ("p-1", "o@1", "echo", "echo", 3, 17, None), ({"k": [1, 2.5]}, "é")]:
        want = hashlib.sha256(b"".join(msgspec.json.encode(p) + b"\x1f" for p in parts)).hexdigest()
        assert stable_id(*parts) == want[:16] and stable_id(*parts, size=64) == want
