"""Which version of each policy a prompt's generators use (``GeneratorSpec.policy``).

At each prompt the newest version the worker knows is taken (``streams.policy_registry``);
adaptive sampling's later draws for a set are pinned to the version its first candidates
carry, so a set never mixes versions of one policy.
"""
from __future__ import annotations

from schemas import CandidateSet, GeneratorSpec, Policy, SynthesisSpec
from schemas.policies import parse_ref
from streams.runtime import Blocked

WAIT_S = 30.0  # how long a prompt waits for a policy that has no version yet (then the stage blocks)
UNKNOWN_FIX = ("publish a version: `prefstream policy publish NAME --base MODEL --gguf FILE` (or --peft DIR for "
               "vLLM); the stage resumes by itself")


class PolicyView:
    """What a prompt's writer calls instead of the worker's ``Backends``: generators naming a
    policy are bound to the version chosen for this prompt."""

    def __init__(self, backends, chosen: dict[str, Policy]) -> None:
        self.backends, self.chosen = backends, chosen

    def get(self, gen: GeneratorSpec):
        return self.backends.policy(gen, self.chosen[gen.policy]) if gen.policy else self.backends.get(gen)

    def ref(self, gen: GeneratorSpec) -> str | None:
        return self.chosen[gen.policy].ref if gen.policy else None


def pins(cset: CandidateSet) -> dict[str, int]:
    """name → the version a set's candidates were written with."""
    return dict(parse_ref(c.policy) for c in cset.candidates if c.policy)  # type: ignore[misc]


async def bind(spec: SynthesisSpec, backends, pinned: dict[str, int] | None = None, wait_s: float = WAIT_S):
    """``backends`` as the prompt's writer sees it: unchanged where no generator names a policy."""
    names = sorted({g.policy for g in spec.generators if g.policy and g.backend != "reference"})
    if not names:
        return backends
    registry = getattr(backends, "policies", None)
    if registry is None:
        raise Blocked("policy_unknown", f"the objective's generators name policies {names}, but this worker "
                      "follows no policies topic", "run synthesize in a `prefstream worker` (it follows them)")
    chosen = {}
    for name in names:
        version = (pinned or {}).get(name)
        policy = registry.get(name, version) if version else await registry.wait_for(name, wait_s)
        if policy is None:
            what = f"version {version} of policy {name!r}" if version else f"policy {name!r}"
            raise Blocked("policy_unknown", f"the objective's generators name {what}, which is not published",
                          UNKNOWN_FIX)
        chosen[name] = policy
    return PolicyView(backends, chosen)
