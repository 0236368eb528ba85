import msgspec
import pytest

from agents import curate
from schemas import Curated, Message, ObjectiveSpec, Prompt, Verification
from streams.runtime import Rejected

OBJ = {"default": ObjectiveSpec(name="default", version=3), "old": ObjectiveSpec(name="old", status="retired")}


def P(**kw):
    base = dict(id="p1", messages=[Message(role="user", content="What is 2+3?")])
    return Prompt(**{**base, **kw})


def test_routes_to_named_or_default_objective():
    [e] = curate.process(P(), OBJ, "default")
    assert e.topic.short == "curated" and e.key == "p1"
    assert isinstance(e.value, Curated) and e.value.objective.ref == "default@3"


@pytest.mark.parametrize("prompt,reason", [
    (P(messages=[]), "no messages"),
    (P(messages=[Message(role="user", content="")]), "empty"),
    (P(messages=[Message(role="user", content="q"), Message(role="assistant", content="a")]), "assistant"),
    (P(messages=[Message(role="user", content="x" * 300_000)]), "limit"),
    (P(objective="nope"), "unknown objective"),
    (P(objective="old"), "retired"),
    (P(verification=Verification(kind="ifeval", instruction_id_list=["a", "b"], kwargs=[{}])), "kwargs"),
])
def test_refusals_carry_reason_and_prompt_id(prompt, reason):
    with pytest.raises(Rejected, match=reason) as err:
        curate.process(prompt, OBJ, "default")
    assert err.value.prompt_id == "p1"


def test_an_oversized_id_or_metadata_is_refused_with_the_limit_and_what_to_do():
    with pytest.raises(Rejected, match="512 limit; use a shorter id") as err:
        curate.process(P(id="p" * 5000), OBJ, "default")
    assert err.value.prompt_id == "p" * 512  # the dead letter's key stays bounded
    with pytest.raises(Rejected, match="tags and metadata .* over the 65536 limit"):
        curate.process(P(metadata={"blob": "x" * 70_000}), OBJ, "default")
    with pytest.raises(Rejected, match="tags and metadata"):
        curate.process(P(tags=["t" * 1000] * 70), OBJ, "default")
    [ok] = curate.process(P(id="p" * 512, metadata={"k": "x" * 60_000}), OBJ, "default")
    assert ok.topic.short == "curated"


def test_pii_is_scrubbed_per_objective_before_any_model_sees_it():
    from schemas import CurationSpec

    objs = {"default": ObjectiveSpec(name="default"),
            "raw": ObjectiveSpec(name="raw", curation=CurationSpec(pii=[]))}
    p = P(messages=[Message(role="user", content="I am jane@corp.io, card 4111 1111 1111 1111. Help?")],
          metadata={"production_response": "Sure jane@corp.io"})
    [e] = curate.process(p, objs, "default")
    assert e.value.prompt.messages[0].content == "I am [EMAIL], card [CARD]. Help?"
    assert e.value.prompt.metadata["production_response"] == "Sure [EMAIL]"
    assert e.value.scrubbed == {"email": 2, "card": 1}
    [raw] = curate.process(msgspec.structs.replace(p, objective="raw"), objs, "default")
    assert "jane@corp.io" in raw.value.prompt.messages[0].content and raw.value.scrubbed == {}


def test_national_phone_numbers_are_scrubbed_for_the_operators_regions():
    """``pii_phone_regions`` (Settings) reaches curate's scrubbing as a parsed region tuple."""
    from agents.pii import phone_regions
    from streams.settings import load

    settings = load(env={"PREFSTREAM_PII_PHONE_REGIONS": "us, tr,CN"})
    assert phone_regions(settings.pii_phone_regions) == ("US", "TR", "CN")
    p = P(messages=[Message(role="user", content="Call 05321234567 or +1 415 555 0132")])
    [e] = curate.process(p, OBJ, "default", regions=phone_regions(settings.pii_phone_regions))
    assert e.value.prompt.messages[0].content == "Call [PHONE] or [PHONE]" and e.value.scrubbed == {"phone": 2}
    [e] = curate.process(p, OBJ, "default")  # default: international numbers only
    assert e.value.prompt.messages[0].content == "Call 05321234567 or [PHONE]"
    with pytest.raises(ValueError, match="UK.*GB"):
        phone_regions("US,UK")
