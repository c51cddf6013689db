"""The query embedder against the real all-MiniLM-L6-v2 model.

Tests marked slow load the bundled model (a few seconds, once per module); they
run in CI, the marker only labels them. The unmarked tests check what must hold
without a model: importing is cheap and nothing loads until asked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.embedder import EMBEDDING_DIM, Embedder

# Worked examples in the style of ARC-Easy; five of them are > 256 word pieces on
# their own, so with the library's default right truncation the model never sees
# the final question.
_SHOTS = [
    (
        "Which of the following is a renewable source of energy that can be used to "
        "generate electricity for a town?",
        ["coal", "oil", "wind", "natural gas"],
        "C",
    ),
    (
        "A student puts a metal spoon in a cup of hot soup. After a few minutes the handle "
        "of the spoon feels hot. How did the heat reach the handle of the spoon?",
        ["by conduction", "by convection", "by radiation", "by evaporation"],
        "A",
    ),
    (
        "A geologist finds an unknown mineral sample in a field. Which property of the "
        "mineral can be determined just by looking at it?",
        ["luster", "mass", "weight", "hardness"],
        "A",
    ),
    (
        "Plants use sunlight, water and carbon dioxide to make their own food in their "
        "leaves. What gas do plants release into the air during this process?",
        ["nitrogen", "oxygen", "hydrogen", "helium"],
        "B",
    ),
    (
        "A ball is rolled across a thick carpet and slowly comes to a stop. Which force is "
        "mainly responsible for making the ball slow down and stop?",
        ["gravity", "magnetism", "friction", "buoyancy"],
        "C",
    ),
]
_FINALS = [
    (
        "What is the main function of the roots of a plant?",
        ["to make seeds", "to take in water", "to attract insects", "to make food"],
    ),
    ("Which planet is closest to the Sun?", ["Mercury", "Venus", "Earth", "Mars"]),
    (
        "A scientist wants to measure the volume of a liquid. Which tool should she use?",
        ["a balance", "a thermometer", "a graduated cylinder", "a ruler"],
    ),
    ("Which of these animals is a mammal?", ["shark", "frog", "whale", "lizard"]),
]


def _arc_item(question: str, choices: list[str], answer: str | None = None) -> str:
    text = f"Question: {question}\n"
    text += "\n".join(f"({letter}) {c}" for letter, c in zip("ABCD", choices, strict=True))
    text += "\nAnswer:"
    return text + (f" {answer}\n\n" if answer else "")


FEW_SHOT_PREFIX = (
    "The following are multiple choice questions about grade-school science. "
    "Answer with the letter of the correct choice.\n\n" + "".join(_arc_item(*s) for s in _SHOTS)
)
FINAL_ITEMS = [_arc_item(q, c) for q, c in _FINALS]
FEW_SHOT_PROMPTS = [FEW_SHOT_PREFIX + item for item in FINAL_ITEMS]

# (query, paraphrase, unrelated query)
TRIPLES = [
    (
        "How do I reset my password?",
        "What are the steps to change my login password?",
        "What is the boiling point of water at sea level?",
    ),
    (
        "Write a Python function that reverses a string.",
        "How can I reverse a string in Python code?",
        "Who won the football World Cup in 2010?",
    ),
    (
        "What are the symptoms of the flu?",
        "How can I tell if I have influenza?",
        "Translate 'good morning' into French.",
    ),
    (
        "Summarize the causes of World War I.",
        "What led to the outbreak of the First World War?",
        "How many grams of sugar are in a teaspoon?",
    ),
    (
        "Solve for x: 2x + 3 = 11.",
        "What value of x satisfies 2x + 3 = 11?",
        "Recommend a good science fiction novel.",
    ),
]


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    yield Embedder(cache_size=1_000).load()


@pytest.fixture(scope="module")
def uncached() -> Iterator[Embedder]:
    """Every call goes to the model: the reference for cached and concurrent results."""
    yield Embedder(cache_size=0).load()


@pytest.fixture(scope="module")
def right_embedder() -> Iterator[Embedder]:
    """The library's default truncation, kept only to show what left truncation fixes."""
    yield Embedder(cache_size=0, truncation_side="right").load()


def _off_diagonal(sim: np.ndarray) -> np.ndarray:
    return sim[~np.eye(len(sim), dtype=bool)]


# --- no model needed ----------------------------------------------------------


def test_import_loads_nothing_and_sets_no_environment() -> None:
    code = (
        "import os, sys\n"
        "os.environ.pop('HF_HUB_OFFLINE', None)\n"
        "import service.embedder, service.features\n"
        "heavy = {'torch', 'sentence_transformers', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert 'HF_HUB_OFFLINE' not in os.environ\n"
        "e = service.embedder.Embedder()\n"
        "assert not e.loaded and 'torch' not in sys.modules\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_empty_batch_needs_no_model() -> None:
    e = Embedder()
    out = e.embed([])
    assert out.shape == (0, EMBEDDING_DIM)
    assert not e.loaded


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"cache_size": -1}, "cache_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"truncation_side": "middle"}, "truncation_side"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Embedder(**kwargs)  # type: ignore[arg-type]


def test_a_bare_string_is_rejected() -> None:
    with pytest.raises(TypeError, match="embed_one"):
        Embedder().embed("one text")


# --- real model ---------------------------------------------------------------


@pytest.mark.slow
def test_loads_offline_with_left_truncation(embedder: Embedder) -> None:
    assert os.environ.get("HF_HUB_OFFLINE")
    assert embedder.max_seq_length == 256
    assert embedder.describe() == {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "embedding_dim": 384,
        "truncation_side": "left",
        "prepare": "last-message/question-part/v1",
    }


@pytest.mark.slow
def test_vectors_are_unit_length(embedder: Embedder) -> None:
    texts = [t for triple in TRIPLES for t in triple] + FEW_SHOT_PROMPTS + [""]
    emb = embedder.embed(texts)
    assert emb.shape == (len(texts), EMBEDDING_DIM)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_one("hello").shape == (EMBEDDING_DIM,)


@pytest.mark.slow
@pytest.mark.parametrize(("query", "paraphrase", "unrelated"), TRIPLES)
def test_paraphrases_are_closer_than_unrelated_queries(
    embedder: Embedder, query: str, paraphrase: str, unrelated: str
) -> None:
    q, p, u = embedder.embed([query, paraphrase, unrelated])
    # Measured: paraphrases 0.74-0.92, unrelated -0.03-0.13; a 0.4 margin is safe.
    assert float(q @ p) > float(q @ u) + 0.4


@pytest.mark.slow
def test_few_shot_prompts_keep_their_final_question(
    embedder: Embedder, right_embedder: Embedder
) -> None:
    # Premise: the shared prefix alone fills the model's window.
    tokenizer = right_embedder._load_locked().tokenizer
    prefix_tokens = len(tokenizer(FEW_SHOT_PREFIX, truncation=False)["input_ids"])
    assert prefix_tokens > embedder.max_seq_length

    # Embedding the raw prompt with the library's right truncation drops the final
    # question: all four prompts collapse onto one vector.
    raw = right_embedder._encode(FEW_SHOT_PROMPTS)
    assert _off_diagonal(raw @ raw.T).min() > 0.9999

    # What we embed is the question part: measured pairwise cosine 0.14-0.38, the
    # same as the final questions alone.
    left = embedder.embed(FEW_SHOT_PROMPTS)
    assert _off_diagonal(left @ left.T).max() < 0.6
    alone = embedder.embed(FINAL_ITEMS)
    np.testing.assert_allclose(np.sum(left * alone, axis=1), 1.0, atol=1e-4)


@pytest.mark.slow
def test_routerbench_list_literal_embeds_like_plain_text(embedder: Embedder) -> None:
    literal, plain, turns = embedder.embed(
        ["['Q: what is 2+2?']", "Q: what is 2+2?", "['Hi there', 'Hello!', 'Q: what is 2+2?']"]
    )
    np.testing.assert_allclose(literal, plain, atol=1e-6)
    np.testing.assert_allclose(turns, plain, atol=1e-6)


@pytest.mark.slow
def test_batch_equals_one_by_one(embedder: Embedder, uncached: Embedder) -> None:
    texts = [t for triple in TRIPLES for t in triple] + FEW_SHOT_PROMPTS
    batch = uncached.embed(texts)
    single = np.stack([uncached.embed_one(t) for t in texts])
    # Padding in a batch changes float summation order only.
    np.testing.assert_allclose(batch, single, atol=1e-5)
    np.testing.assert_allclose(embedder.embed(texts), batch, atol=1e-5)


@pytest.mark.slow
def test_cache_counts_hits_and_returns_the_identical_vector(embedder: Embedder) -> None:
    text = "A text that no other test embeds: the capital of Mongolia?"
    before = embedder.cache_info()
    first = embedder.embed_one(text)
    after_miss = embedder.cache_info()
    assert after_miss.misses == before.misses + 1
    assert after_miss.size == before.size + 1

    second = embedder.embed_one(f"  {text}\n")  # same prepared text
    after_hit = embedder.cache_info()
    assert after_hit.hits == after_miss.hits + 1
    assert after_hit.misses == after_miss.misses
    np.testing.assert_array_equal(first, second)

    # Callers get copies: scribbling on a result does not corrupt the cache.
    second[:] = 0.0
    np.testing.assert_array_equal(embedder.embed_one(text), first)


@pytest.mark.slow
def test_only_misses_reach_the_model_and_lru_evicts() -> None:
    e = Embedder(cache_size=2).load()
    e.embed(["a", "b", "a"])  # "a" twice in one batch: two misses, one model row
    assert e.cache_info() == (0, 3, 2, 2)
    e.embed(["a", "c"])  # hit on "a"; "c" evicts the least recently used, "b"
    assert e.cache_info() == (1, 4, 2, 2)
    e.embed(["b"])
    assert e.cache_info().misses == 5
    e.clear_cache()
    assert e.cache_info() == (0, 0, 0, 2)


@pytest.mark.slow
def test_threadpool_callers_get_the_serial_result(embedder: Embedder, uncached: Embedder) -> None:
    texts = [
        f"Question {i}: how many legs does a {animal} have?"
        for i, animal in enumerate(
            ["spider", "cat", "bird", "ant", "snake", "crab", "fish", "horse"]
        )
    ]
    serial = uncached.embed(texts)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(embedder.embed_one, texts * 3))
    np.testing.assert_allclose(np.stack(results), np.concatenate([serial] * 3), atol=1e-5)


# --- bounded memory and work (no model: the encoder is stood in for) ----------


def _fake_encode(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
    out[:, 0] = 1.0
    return out


def test_cache_is_bounded_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    one = Embedder(cache_size=1_000)
    monkeypatch.setattr(one, "_encode", _fake_encode)
    one.embed(["a single short text"])
    entry = one.cache_bytes
    assert EMBEDDING_DIM * 4 < entry < EMBEDDING_DIM * 4 + 512

    e = Embedder(cache_size=1_000, cache_max_bytes=10 * entry)
    monkeypatch.setattr(e, "_encode", _fake_encode)
    e.embed([f"text number {i}" for i in range(50)])
    assert e.cache_info().size == 10 and e.cache_bytes <= e.cache_max_bytes
    e.embed(["text number 49"])  # the newest stayed
    assert e.cache_info().hits == 1


def test_long_texts_cost_the_cache_what_short_ones_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyed by a digest: a 20,000-character prompt takes the room of a short one (the
    text-keyed cache held each prompt whole: ~5 GB at 50,000 long prompts)."""
    import tracemalloc

    e = Embedder(cache_size=1_000)
    monkeypatch.setattr(e, "_encode", _fake_encode)
    e.embed(["short"])
    per_entry = e.cache_bytes
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(40):
            e.embed(["a long prompt " * 1_400 + str(i)])  # 19,600 characters each
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert e.cache_bytes == 41 * per_entry
    assert held < 40 * 4_000, held  # the texts (40 x 19.6 kB) are not kept


def test_prepare_text_bounds_its_work() -> None:
    from service.embedder import LITERAL_MAX_CHARS, PREPARE_MAX_CHARS, prepare_text

    # a list literal beyond the bound is not unpacked (ast.literal_eval takes ~0.6 ms
    # per 1,000 characters, on the event loop before this change)
    big = "[" + ", ".join(["'filler turn'"] * 10_000) + ", 'the question?']"
    assert len(big) > LITERAL_MAX_CHARS
    out = prepare_text(big)
    assert len(out) <= PREPARE_MAX_CHARS and out.endswith("'the question?']")
    # within the bound it still is
    assert prepare_text("['first turn', 'the question?']") == "the question?"
    # any text is cut to its end, the part the left-truncating model reads
    huge = "x" * 1_000_000 + " the end"
    assert len(prepare_text(huge)) <= PREPARE_MAX_CHARS
    assert prepare_text(huge).endswith("the end")
