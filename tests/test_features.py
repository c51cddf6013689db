"""Pure logic of the featurizer and of the text preparation helpers; no model loads."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from service.embedder import LONG_PROMPT_CHARS, prepare_text, question_part, text_from_messages
from service.features import Featurizer


class FakeEmbedder:
    """UNIT-TEST DOUBLE, not a model: unit vectors seeded by a checksum of the text.

    Used only here, to test the featurizer's arithmetic without loading a model.
    The real model's behaviour is tested in test_embedder.py.
    """

    model_name = "unit-test-double"
    dim = 384
    truncation_side = "left"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = [
            np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim) for t in texts
        ]
        emb = np.array(rows).reshape(len(texts), self.dim)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)


TEXTS = ["short", "a somewhat longer query about routing", "['a list literal']", ""]


# --- Featurizer ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "dim"),
    [
        ({}, 386),
        ({"projection_dim": 32}, 34),
        ({"projection_dim": 384}, 386),
        ({"projection_dim": 1, "bias": False}, 2),
        ({"bias": False, "log_length": False}, 384),
        ({"projection_dim": 16, "log_length": False}, 17),
    ],
)
def test_dim_counts_every_column(kwargs: dict[str, object], dim: int) -> None:
    f = Featurizer(FakeEmbedder(), **kwargs)  # type: ignore[arg-type]
    assert f.dim == dim
    assert f.transform(TEXTS).shape == (len(TEXTS), dim)
    assert f.transform_one("x").shape == (dim,)
    assert f.describe()["dim"] == dim


def test_output_is_float64_and_finite() -> None:
    out = Featurizer(FakeEmbedder(), projection_dim=8).transform(TEXTS)
    assert out.dtype == np.float64
    assert np.all(np.isfinite(out))


def test_bias_and_log_length_columns() -> None:
    out = Featurizer(FakeEmbedder(), projection_dim=8).transform(TEXTS)
    np.testing.assert_array_equal(out[:, -1], 1.0)
    # Length of the ORIGINAL text, list-literal brackets and quotes included.
    expected = [math.log1p(len(t)) / 10 for t in TEXTS]
    np.testing.assert_allclose(out[:, -2], expected)


def test_without_projection_the_block_is_the_embedding() -> None:
    fake = FakeEmbedder()
    out = Featurizer(fake, bias=False, log_length=False).transform(TEXTS)
    np.testing.assert_allclose(out, fake.embed(TEXTS))


@pytest.mark.parametrize("projection_dim", [None, 1, 8, 384])
def test_embedding_block_has_unit_rows(projection_dim: int | None) -> None:
    f = Featurizer(FakeEmbedder(), projection_dim=projection_dim)
    block = f.transform(TEXTS)[:, : f.dim - 2]
    np.testing.assert_allclose(np.linalg.norm(block, axis=1), 1.0)


def test_projection_is_seeded() -> None:
    def features(seed: int) -> np.ndarray:
        return Featurizer(FakeEmbedder(), projection_dim=16, seed=seed).transform(TEXTS)

    np.testing.assert_array_equal(features(7), features(7))
    assert not np.allclose(features(7)[:, :16], features(8)[:, :16])


def test_projection_roughly_keeps_similarity() -> None:
    # Johnson-Lindenstrauss: with k = 256 inner products move by about 1/sqrt(k).
    fake = FakeEmbedder()
    emb = fake.embed([f"text {i}" for i in range(20)])
    emb[1] = emb[0] + 0.5 * emb[1]
    emb[1] /= np.linalg.norm(emb[1])
    f = Featurizer(fake, projection_dim=256, bias=False, log_length=False)
    out = f.transform_embeddings(emb, np.zeros(20))
    assert abs(float(out[0] @ out[1]) - float(emb[0] @ emb[1])) < 0.15


def test_transform_embeddings_matches_transform() -> None:
    fake = FakeEmbedder()
    f = Featurizer(fake, projection_dim=12, seed=3)
    lengths = np.array([len(t) for t in TEXTS])
    np.testing.assert_allclose(
        f.transform_embeddings(fake.embed(TEXTS), lengths), f.transform(TEXTS)
    )


def test_one_embedder_call_per_batch() -> None:
    fake = FakeEmbedder()
    Featurizer(fake).transform(TEXTS)
    assert fake.calls == [TEXTS]


@pytest.mark.parametrize("projection_dim", [0, -1, 385, 2.5, True, "8"])
def test_bad_projection_dim_is_named(projection_dim: object) -> None:
    with pytest.raises(ValueError, match="projection_dim"):
        Featurizer(FakeEmbedder(), projection_dim=projection_dim)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"seed": -1}, "seed"), ({"bias": 1}, "bias"), ({"log_length": "yes"}, "log_length")],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Featurizer(FakeEmbedder(), **kwargs)  # type: ignore[arg-type]


def test_bad_shapes_are_rejected() -> None:
    f = Featurizer(FakeEmbedder())
    with pytest.raises(ValueError, match="emb"):
        f.transform_embeddings(np.zeros((2, 10)), np.zeros(2))
    with pytest.raises(ValueError, match="lengths"):
        f.transform_embeddings(np.ones((2, 384)), np.zeros(3))
    with pytest.raises(ValueError, match="lengths"):
        f.transform_embeddings(np.ones((2, 384)), np.array([1.0, -1.0]))
    with pytest.raises(TypeError, match="transform_one"):
        f.transform("a bare string")


def test_describe_pins_everything_that_shapes_the_features() -> None:
    f = Featurizer(FakeEmbedder(), projection_dim=64, seed=5)
    assert f.describe() == {
        "model": "unit-test-double",
        "embedding_dim": 384,
        "truncation_side": "left",
        "projection_dim": 64,
        "seed": 5,
        "bias": True,
        "log_length": True,
        "dim": 66,
    }
    assert f.describe() != Featurizer(FakeEmbedder(), projection_dim=64, seed=6).describe()


# --- prepare_text ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("['Q: what is 2+2?']", "Q: what is 2+2?"),
        ('  ["  padded  "]\n', "padded"),
        ("['first turn', 'a reply', 'the last turn']", "the last turn"),
        ("  plain question?  ", "plain question?"),
        ("[citation needed] is a common tag", "[citation needed] is a common tag"),
        ("[INST] write a poem [/INST]", "[INST] write a poem [/INST]"),
        ("[1, 2, 3]", "[1, 2, 3]"),
        ("['mixed', 1]", "['mixed', 1]"),
        ("[['nested']]", "[['nested']]"),
        ("[]", "[]"),
        ("['unterminated", "['unterminated"),
        ("[__import__('os').getcwd()]", "[__import__('os').getcwd()]"),
    ],
)
def test_prepare_text(text: str, expected: str) -> None:
    assert prepare_text(text) == expected


# --- text_from_messages -----------------------------------------------------------


def test_text_from_messages_takes_the_last_user_message() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "follow-up question"},
        {"role": "assistant", "content": "a later assistant turn"},
    ]
    assert text_from_messages(messages) == "follow-up question"


def test_text_from_messages_joins_text_parts() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in"},
                {"type": "image_url", "image_url": {"url": "data:..."}},
                {"type": "text", "text": "this picture?"},
            ],
        }
    ]
    assert text_from_messages(messages) == "What is in\nthis picture?"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hi"}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "user", "content": None}],
    ],
)
def test_text_from_messages_without_user_text_raises(messages: list[dict[str, object]]) -> None:
    with pytest.raises(ValueError, match="messages"):
        text_from_messages(messages)  # type: ignore[arg-type]


def test_text_from_messages_rejects_a_string() -> None:
    with pytest.raises(TypeError, match="messages"):
        text_from_messages("hello")  # type: ignore[arg-type]


# --- question_part ----------------------------------------------------------------


def test_long_few_shot_prompt_keeps_its_trailing_question() -> None:
    shot = "Question: an earlier worked example that is long enough to count.\nAnswer: A"
    question = "Question: which planet is closest to the Sun, and why is it the hottest?\nAnswer:"
    prompt = "\n\n".join([shot] * 20 + [question])
    assert len(prompt) > LONG_PROMPT_CHARS
    assert prepare_text(prompt) == question
    # a tiny last block brings the one before it along
    assert prepare_text(prompt + "\n\nA:") == question + "\n\nA:"
    # and it applies after a RouterBench list literal is unpacked
    assert prepare_text(repr([prompt])) == question


def test_short_or_unstructured_text_is_left_alone() -> None:
    short = "first part\n\nsecond part\n\nthird part"
    assert prepare_text(short) == short
    long_paragraph = "word " * 400
    assert prepare_text(long_paragraph) == long_paragraph.strip()
    assert len(question_part("x" * 2000)) == 2000
