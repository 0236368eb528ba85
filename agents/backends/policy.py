"""Generators that follow a policy (``GeneratorSpec.policy``): a published LoRA adapter over the
generator's base model, one version per prompt.

* ``llamacpp``: a ``LlamaCppGenerator`` of its own per (policy, base model), so a judge or a
  fixed-model generator on the same base never sees the adapter. Each version's GGUF LoRA is
  checked (inside PREFSTREAM_POLICY_DIR / PREFSTREAM_MODEL_DIR, its sha256) and loaded once in
  a thread (``llama_adapter_lora_init`` on the loaded model); it is set on the contexts under
  the generator's lock just before each generation, so prompts still running on the old
  version finish on it while the new one loads.
* ``openai`` (vLLM): ``POST /v1/load_lora_adapter`` once per version, then requests name the
  adapter as their ``model``. A server without runtime LoRA loading (404, or a 400 that is not
  "already loaded") blocks the stage: ``Blocked("adapter_unsupported")``.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from agents.backends.base import BackendError, GenRequest, Generation
from schemas import Policy
from streams.policies import PolicyError, adapter_file, file_sha256
from streams.runtime import Blocked

log = logging.getLogger(__name__)

KEEP_LOADED = 2  # adapter versions kept per policy (older ones are freed once not in use)
UNAVAILABLE_FIX = ("publish a version whose adapter the workers can read (`prefstream policy publish`), or fix the "
                   "file or PREFSTREAM_POLICY_DIR; the stage resumes by itself")


@dataclass(frozen=True)
class Served:
    """The model spec of an adapter a server serves under its own name."""

    backend: str
    model: str
    base_url: str | None


@dataclass(eq=False)
class LoRA:
    ref: str
    ptr: Any
    scale: float = 1.0
    freed: bool = False
    users: int = 0  # generations that hold it (it is never freed while one does)

    def __repr__(self) -> str:
        return f"LoRA({self.ref})"


class LlamaCppPolicy:
    """One policy on one llamacpp base: the base generator and the loaded versions."""

    def __init__(self, base, settings) -> None:
        self.base, self.settings = base, settings
        self.loras: dict[int, LoRA] = {}
        self._loading: dict[int, asyncio.Future] = {}

    def _load(self, policy: Policy) -> LoRA:
        """In a thread: check the file, its sha256, then load it on the base's model."""
        import llama_cpp as C

        path = adapter_file(policy, self.settings)
        if not path.is_file():
            raise PolicyError(f"policy {policy.ref}: the adapter {path} does not exist on this worker")
        if policy.sha256 and file_sha256(path) != policy.sha256:
            raise PolicyError(f"policy {policy.ref}: the adapter {path} does not have the published sha256 "
                              f"{policy.sha256} (changed or half-written since it was published)")
        ptr = C.llama_adapter_lora_init(self.base._llm._model.model, str(path).encode())
        if not ptr:
            raise PolicyError(f"policy {policy.ref}: llama.cpp cannot load {path} as a LoRA adapter of "
                              f"{self.base.model_path} (not a GGUF LoRA, or made for another base model than "
                              f"{policy.base_model!r} names)")
        log.info("loaded adapter %s from %s", policy.ref, path)
        return LoRA(policy.ref, ptr)

    async def lora(self, policy: Policy) -> LoRA:
        have = self.loras.get(policy.version)
        if have is not None and not have.freed:
            return have
        pending = self._loading.get(policy.version)
        if pending is None:  # one load per version, however many prompts ask at once
            pending = asyncio.ensure_future(asyncio.to_thread(self._load, policy))
            self._loading[policy.version] = pending
        try:
            lora = await asyncio.shield(pending)
        except (PolicyError, OSError) as e:  # OSError: the file unreadable (permissions, a vanished mount)
            raise Blocked("adapter_unavailable", f"policy {policy.ref}: {e}" if isinstance(e, OSError) else str(e),
                          UNAVAILABLE_FIX) from None
        finally:
            if pending.done():
                self._loading.pop(policy.version, None)
        self.loras[policy.version] = lora
        await self._evict(policy.version)
        return lora

    async def _evict(self, wanted: int) -> None:
        """Free the oldest versions beyond KEEP_LOADED, but never ``wanted`` (just loaded for a
        prompt), the one the contexts apply, or one a generation holds."""
        old = [v for v in sorted(self.loras)[:-KEEP_LOADED] if v != wanted]
        if not old:
            return
        import llama_cpp as C

        async with self.base._lock:  # no generation runs; the active adapter stays
            for v in old:
                lora = self.loras[v]
                if lora is not self.base._lora and not lora.users:
                    C.llama_adapter_lora_free(lora.ptr)
                    lora.freed = True
                    del self.loras[v]

    async def generate(self, policy: Policy, req: GenRequest) -> list[Generation]:
        while True:
            lora = await self.lora(policy)
            if not lora.freed:  # freed between loading and here: load again
                break
        lora.users += 1
        try:
            return await self.base.generate(req, lora=lora)
        finally:
            lora.users -= 1


class OpenAIPolicy:
    """One policy on one OpenAI-compatible (vLLM) server: which adapters it has loaded."""

    def __init__(self, make_generator) -> None:
        self._make = make_generator  # served adapter name → OpenAIGenerator (cached by Backends)
        self._loads: dict[str, int] = {}  # served name → how many times this worker loaded it
        self._lock = asyncio.Lock()

    async def _ensure(self, policy: Policy, reload_after: int | None = None):
        """The generator for ``policy``, its adapter loaded. ``reload_after``: the load count a
        request saw when the server answered 404 — load again unless another request already did."""
        gen = self._make(policy.served_name)
        inner = getattr(gen, "inner", gen)  # a MeteredGenerator wraps it
        if reload_after is None and policy.served_name in self._loads:
            return gen
        if not policy.adapter_peft:
            raise Blocked("adapter_unavailable", f"policy {policy.ref} has no PEFT adapter for an openai/vLLM server",
                          "publish the version with --peft DIR (the directory the vLLM server reads)")
        async with self._lock:
            loads = self._loads.get(policy.served_name)
            if loads is None or loads == reload_after:
                await load_lora_adapter(inner, policy)
                self._loads[policy.served_name] = (loads or 0) + 1
        return gen

    async def generate(self, policy: Policy, req: GenRequest) -> list[Generation]:
        gen = await self._ensure(policy)
        loads = self._loads[policy.served_name]
        try:
            return await gen.generate(req)
        except BackendError as e:
            if e.status != 404:
                raise
            # the server forgot the adapter (restarted): load it again, once for all the requests
            # that saw the 404, rather than dead-letter
            log.warning("%s answered 404 for adapter %s; loading it again", policy.served_name, policy.ref)
            return await (await self._ensure(policy, reload_after=loads)).generate(req)


async def load_lora_adapter(gen, policy: Policy) -> None:
    """``POST {server}/v1/load_lora_adapter``; "already loaded" counts as loaded."""
    import httpx

    body = {"lora_name": policy.served_name, "lora_path": policy.adapter_peft}
    try:
        resp = await gen.post("/v1/load_lora_adapter", body)
    except httpx.TransportError as e:
        raise Blocked("backend_down", f"{gen.base_url}/v1/load_lora_adapter: {type(e).__name__}: {e}",
                      "start the model server or fix its URL; the stage resumes by itself") from None
    text = resp.text[:500]
    if resp.status_code < 300 or (resp.status_code == 400 and "already" in text.lower()):
        log.info("adapter %s (%s) loaded on %s", policy.served_name, policy.ref, gen.base_url)
        return
    if resp.status_code in (400, 404, 405, 501):
        raise Blocked("adapter_unsupported",
                      f"{gen.base_url} cannot load the LoRA adapter of policy {policy.ref} "
                      f"(HTTP {resp.status_code} from /v1/load_lora_adapter: {text})",
                      "start vLLM with --enable-lora (and --max-lora-rank at least the adapter's rank) and "
                      "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and check that lora_path is readable by the server")
    raise Blocked("backend_down", f"{gen.base_url}/v1/load_lora_adapter answered HTTP {resp.status_code}: {text}",
                  "check the model server's log; the stage resumes by itself")


class Bound:
    """A generator for one policy version: what a prompt's writer calls."""

    def __init__(self, owner, policy: Policy) -> None:
        self.owner, self.policy = owner, policy
        self.backend = "llamacpp" if isinstance(owner, LlamaCppPolicy) else "openai"
        self.model = f"policy:{policy.name}"

    async def generate(self, req: GenRequest) -> list[Generation]:
        return await self.owner.generate(self.policy, req)

    async def close(self) -> None:  # the owner's generators are closed by Backends
        pass
