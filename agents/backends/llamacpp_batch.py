"""N continuations of one completion prompt in one batched decode (llama.cpp's low-level API).

The prompt is evaluated once as sequence 0; its KV cells are shared with sequences 1..N-1
(``llama_memory_seq_cp``), and from then on every step decodes one token per live sequence
in a single ``llama_decode``. Each sequence samples with a sampler chain of its own (top-k 40,
top-p, min-p 0.05, temperature, then a distribution seeded with the candidate's seed: the
chain ``llama_cpp.Llama`` builds), so a candidate's text depends on the prompt, its seed and
the request's N only.

Used by ``LlamaCppGenerator`` for completion requests with ``n > 1`` and no grammar when
``PREFSTREAM_LLAMACPP_BATCHED`` is on; ``benchmarks/yield.py --decode`` measures it.
"""
from __future__ import annotations

from dataclasses import dataclass

TOP_K, MIN_P = 40, 0.05


@dataclass
class Continuation:
    tokens: list[int]
    text: str
    finish_reason: str


class BatchDecoder:
    """A context of its own over the ``Llama``'s model, with room for ``n_seq_max`` sequences."""

    def __init__(self, llm, n_ctx: int, threads: int, n_seq_max: int = 16) -> None:
        import llama_cpp as C

        self.C, self.llm = C, llm
        params = C.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, 512, 512
        params.n_seq_max, params.kv_unified = n_seq_max, True
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.n_seq_max, self.n_batch = n_seq_max, 512
        self.ctx = C.llama_init_from_model(llm._model.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not make a context for batched decoding")
        self.vocab = C.llama_model_get_vocab(llm._model.model)
        self.batch = C.llama_batch_init(self.n_batch, 0, n_seq_max)
        self.decode_s = 0.0  # seconds spent in generation steps (a benchmark's figure)

    def close(self) -> None:
        if self.ctx:
            self.C.llama_batch_free(self.batch)
            self.C.llama_free(self.ctx)
            self.ctx = None

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of ``(token, position, sequence, wants logits)``."""
        b = self.batch
        for k, (tok, pos, seq, logits) in enumerate(items):
            b.token[k], b.pos[k], b.n_seq_id[k], b.logits[k] = tok, pos, 1, logits
            b.seq_id[k][0] = seq
        b.n_tokens = len(items)
        rc = self.C.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc}): the context is full")

    def _chain(self, seed: int, temperature: float, top_p: float):
        C = self.C
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        if temperature <= 0:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
            return chain
        for s in (C.llama_sampler_init_top_k(TOP_K), C.llama_sampler_init_top_p(top_p, 1),
                  C.llama_sampler_init_min_p(MIN_P, 1), C.llama_sampler_init_temp(temperature),
                  C.llama_sampler_init_dist(seed & 0xFFFFFFFF)):
            C.llama_sampler_chain_add(chain, s)
        return chain

    def generate(self, prompt: list[int], seeds: list[int], temperature: float, top_p: float,
                 max_tokens: int, stop: list[str], ignore_eos: bool = False) -> list[Continuation]:
        import time

        C, n = self.C, len(seeds)
        if not 0 < n <= self.n_seq_max or len(prompt) < 1:
            raise ValueError(f"batched decoding takes 1..{self.n_seq_max} sequences and a prompt")
        mem = C.llama_get_memory(self.ctx)
        C.llama_memory_clear(mem, True)
        head = prompt[:-1]
        for at in range(0, len(head), self.n_batch):
            self._decode([(t, at + i, 0, False) for i, t in enumerate(head[at:at + self.n_batch])])
        for seq in range(1, n):
            C.llama_memory_seq_cp(mem, 0, seq, -1, -1)
        chains = [self._chain(s, temperature, top_p) for s in seeds]
        out: list[list[int]] = [[] for _ in seeds]
        done: list[Continuation | None] = [None] * n
        live, pos = [(i, prompt[-1]) for i in range(n)], len(prompt) - 1
        started = time.perf_counter()
        try:
            while live:
                self._decode([(tok, pos, i, True) for i, tok in live])
                nxt = []
                for k, (i, _) in enumerate(live):
                    tok = C.llama_sampler_sample(chains[i], self.ctx, k)
                    if not ignore_eos and C.llama_vocab_is_eog(self.vocab, tok):
                        done[i] = self._end(out[i], stop, "stop")
                        continue
                    out[i].append(tok)
                    cut = self._stopped(out[i], stop)
                    if cut is not None or len(out[i]) >= max_tokens:
                        done[i] = cut or self._end(out[i], stop, "length")
                    else:
                        nxt.append((i, tok))
                live, pos = nxt, pos + 1
        finally:
            self.decode_s += time.perf_counter() - started
            for chain in chains:
                C.llama_sampler_free(chain)
        return [d for d in done if d is not None]

    def _text(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="ignore")

    def _stopped(self, tokens: list[int], stop: list[str]) -> Continuation | None:
        text = self._text(tokens)
        hits = [text.find(s) for s in stop if s and s in text]
        return Continuation(tokens, text[:min(hits)], "stop") if hits else None

    def _end(self, tokens: list[int], stop: list[str], reason: str) -> Continuation:
        return Continuation(tokens, self._text(tokens), reason)
