"""One place that turns a spec (``GeneratorSpec``, ``JudgeSpec``) into a live generator.

Generators are cached per (backend, model, base URL): a model is loaded, or an HTTP client
opened, once per worker however many objectives name it.
"""
from __future__ import annotations

import logging
from typing import Protocol, get_args

from agents.backends.base import BackendError, Generator
from schemas.objectives import BackendName
from streams.endpoints import EndpointError, Endpoints, model_file
from streams.runtime import Blocked
from streams.settings import Settings

log = logging.getLogger(__name__)


class ModelSpec(Protocol):
    backend: str
    model: str
    base_url: str | None


class Backends:
    def __init__(self, settings: Settings, metrics=None, policies=None) -> None:
        self._settings = settings
        # streams.policy_registry.PolicyRegistry: the versions generators naming a policy take
        self.policies = policies
        self._metrics = metrics  # streams.metrics.Metrics: each generator is wrapped to record calls
        self._cache: dict[tuple[str, str, str | None], Generator] = {}
        self._policies: dict[tuple, object] = {}  # (backend, model, base URL, policy) → agents.backends.policy
        self._endpoints = Endpoints(settings)

    def get(self, spec: ModelSpec) -> Generator:
        """The generator for ``spec``, built on first use. Building a llamacpp or vllm
        generator loads the model (blocking, once)."""
        base_url = self._base_url(spec) if spec.backend == "openai" else None
        key = (spec.backend, spec.model, base_url)
        gen = self._cache.get(key)
        if gen is None:
            gen = self._metered(self._built(spec.backend, spec.model, base_url))
            self._cache[key] = gen
        return gen

    def _built(self, backend: str, model: str, base_url: str | None) -> Generator:
        try:
            return self._build(backend, model, base_url)
        except (Blocked, BackendError):
            raise
        except Exception as exc:  # noqa: BLE001 - a backend that cannot be built: the worker's environment
            raise Blocked("model_load", f"cannot start the {backend} backend for {model}: {exc}",
                          "install what the error names, or fix the model's path or settings; the stage "
                          "resumes by itself") from exc

    def _metered(self, gen):
        if self._metrics is None:
            return gen
        from streams.metrics import MeteredGenerator

        return MeteredGenerator(gen, self._metrics)

    def policy(self, spec: ModelSpec, policy) -> Generator:
        """The generator for ``spec`` (naming ``policy: NAME``) at ``policy``'s version
        (``agents.backends.policy``): a llamacpp base of its own per policy, or the openai
        server's adapter ``policy.served_name``."""
        from agents.backends import policy as p

        key = (spec.backend, spec.model, spec.base_url, f"policy:{policy.name}")
        owner = self._policies.get(key)
        if owner is None:
            if spec.backend == "llamacpp":
                base = self._built("llamacpp", spec.model, None)
                self._cache[key[:2] + (f"policy:{policy.name}",)] = base  # closed with the rest
                owner = p.LlamaCppPolicy(base, self._settings)
            elif spec.backend == "openai":
                owner = p.OpenAIPolicy(lambda served: self.get(p.Served("openai", served, spec.base_url)))
            else:
                raise BackendError(f"the {spec.backend} backend cannot load a policy's adapter; use llamacpp or "
                                   "openai", retryable=False)
            self._policies[key] = owner
        return self._metered(p.Bound(owner, policy))

    def _base_url(self, spec: ModelSpec) -> str:
        url = spec.base_url or self._settings.openai_base_url
        if not url:  # the deployment's configuration, not the prompt: the stage blocks until it is set
            raise Blocked("environment", f"the openai backend for model {spec.model!r} has no server URL",
                          "set PREFSTREAM_OPENAI_BASE_URL (e.g. http://127.0.0.1:8000/v1) or base_url in the "
                          "objective's spec")
        try:  # the objective was checked when it went live; this is the last line
            return self._endpoints.check(url, f"model {spec.model!r}")
        except EndpointError as e:
            raise BackendError(str(e), retryable=False) from None

    def _build(self, backend: str, model: str, base_url: str | None) -> Generator:
        s = self._settings
        if backend == "llamacpp":
            from agents.backends.llamacpp import LlamaCppGenerator

            path = None
            if model.endswith(".gguf"):  # a file the objective names: only inside PREFSTREAM_MODEL_DIR
                try:
                    path = str(model_file(model, s))
                except EndpointError as e:
                    raise BackendError(f"model {model!r} {e}", retryable=False) from None
            return LlamaCppGenerator(s, model_name=model, model_path=path)
        if backend == "openai":
            from agents.backends.openai import OpenAIGenerator

            assert base_url is not None
            # the key goes only to the server it was configured for
            return OpenAIGenerator(s, model=model, base_url=base_url, api_key=self._endpoints.key_for(base_url))
        if backend == "echo":
            from agents.backends.echo import EchoGenerator

            return EchoGenerator(model)
        if backend == "vllm":
            from agents.backends.vllm import VLLMGenerator

            return VLLMGenerator(s, model=model)
        raise BackendError(f"unknown backend {backend!r}; known: {', '.join(get_args(BackendName))}",
                           retryable=False)

    async def close(self) -> None:
        gens, self._cache = list(self._cache.values()), {}
        for gen in gens:
            try:
                await gen.close()
            except Exception:  # closing one must not stop closing the rest
                log.exception("closing %s backend for %s failed", gen.backend, gen.model)
