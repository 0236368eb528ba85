"""Gemma's tokenizer rebuilt from a GGUF file so that training sees the tokens llama.cpp sees.

transformers 5.17 reads a Gemma 3 GGUF's vocabulary as a Unigram model, but the scores there
are SentencePiece-BPE merge priorities: it splits "user" into "us" + "er" where llama.cpp keeps
one token, and adds no BOS, so a model trained on its ids would learn sequences the workers
never feed it. Here the BPE merges are derived from the scores (``generate_merges``, as
transformers converts a SentencePiece model), the control and user-defined tokens stay whole,
and BOS is added.
"""
from __future__ import annotations

from pathlib import Path

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types


def gemma_tokenizer_from_gguf(path: str | Path):
    import gguf
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import generate_merges
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    r = gguf.GGUFReader(str(path))
    tokens = [str(t) for t in r.fields["tokenizer.ggml.tokens"].contents()]
    scores = [float(s) for s in r.fields["tokenizer.ggml.scores"].contents()]
    types = [int(t) for t in r.fields["tokenizer.ggml.token_type"].contents()]
    vocab = {t: i for i, t in enumerate(tokens)}
    special = {i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED)}
    merges = generate_merges(vocab, {t: scores[i] for i, t in enumerate(tokens) if i not in special})

    def name(key: str) -> str:
        return tokens[int(r.fields[f"tokenizer.ggml.{key}_token_id"].contents())]

    tok = GemmaTokenizer(vocab=vocab, merges=merges, bos_token=name("bos"), eos_token=name("eos"),
                         unk_token=name("unknown"), pad_token=name("padding"), add_bos_token=True)
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken(tokens[i], special=types[i] == CONTROL, normalized=False) for i in sorted(special)]})
    return tok
