"""The ONNX embedding backends against torch, the reference.

The export runs once per module, into a temporary cache directory, with the Hub forced
offline and every non-loopback connection refused: it must be made from the local
model files alone. The embedders that follow open that export (and are checked not
to export again). Tests marked slow load the real model; the others need none.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import service.embedder
from policies import PolicyError
from service.app import create_app
from service.embedder import (
    EMBED_BACKENDS,
    MIN_COSINE_TO_TORCH,
    EmbedBackend,
    Embedder,
    _load_tokenizer,
    _publish,
    length_batches,
    local_model_dir,
    model_digest,
    onnx_model_file,
    prepare_text,
)
from service.features import Featurizer
from service.serving import build_policy, check_features, features_json
from service.settings import Settings
from service.store import open_store
from service.store.base import Snapshot
from tests.service_helpers import make_settings

ONNX_BACKENDS: tuple[EmbedBackend, ...] = ("onnx", "onnx-int8")

_SHOT = (
    "Question: A student puts a metal spoon in a cup of hot soup. After a few minutes the "
    "handle of the spoon feels hot. How did the heat reach the handle?\n(A) by conduction\n"
    "(B) by convection\n(C) by radiation\n(D) by evaporation\nAnswer: A\n\n"
)
PROMPTS: dict[str, str] = {
    "short": "What is 2+2?",
    "question": "How do I reset the password of my account on the website?",
    "few-shot": "The following are multiple choice questions about science.\n\n"
    + _SHOT * 8
    + "Question: Which planet is closest to the Sun?\n(A) Mercury\n(B) Venus\n(C) Earth\n"
    "(D) Mars\nAnswer:",
    # one block over 256 word pieces: the model reads its end only
    "long": "Please summarise the following report. " + "The quarterly figures rose. " * 120,
    "code": "def reverse(s: str) -> str:\n    return s[::-1]\n\nprint(reverse('abc'))  # ?",
    "french": "Quelle est la capitale de la France, et combien d'habitants compte-t-elle ?",
    "chinese": "请用三句话解释什么是机器学习。",
    "russian": "Как перевести эту фразу на английский язык?",
    "routerbench literal": "['Hi there', 'Hello! How can I help?', 'Tell me a joke.']",
    "empty": "   \n\t ",
    "empty literal": "['   ']",
}

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Any]]]:
    """Both ONNX exports made offline into a fresh directory; yields it and the
    non-loopback connections that were attempted (refused) meanwhile."""
    root = tmp_path_factory.mktemp("onnx")
    with pytest.MonkeyPatch.context() as mp:
        attempts: list[Any] = []
        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

        def remote(sock: socket.socket, address: Any) -> bool:
            return sock.family in (socket.AF_INET, socket.AF_INET6) and (
                str(address[0]) not in _LOOPBACK
            )

        def connect(sock: socket.socket, address: Any) -> None:
            if remote(sock, address):
                attempts.append(address)
                raise OSError(f"test: no network ({address!r})")
            real_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            if remote(sock, address):
                attempts.append(address)
                raise OSError(f"test: no network ({address!r})")
            return real_connect_ex(sock, address)

        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        for backend in ONNX_BACKENDS:
            onnx_model_file(backend, root)
        yield root, attempts


@pytest.fixture(scope="module")
def backends(export: tuple[Path, list[Any]]) -> Iterator[dict[EmbedBackend, Embedder]]:
    """An uncached embedder per ONNX backend, opened from the module's export; a
    second export would fail the test."""
    root, _ = export

    def no_export(*args: Any) -> Any:
        raise AssertionError("the cached export should have been opened, not remade")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(service.embedder, "_export_fp32", no_export)
        mp.setattr(service.embedder, "_quantize_int8", no_export)
        yield {b: Embedder(cache_size=0, backend=b, onnx_dir=root).load() for b in ONNX_BACKENDS}


# --- no model needed ----------------------------------------------------------


def test_length_batches_group_similar_lengths_within_the_bounds() -> None:
    lengths = [300, 5, 60, 7, 6, 64, 250, 5, 8, 61]
    batches = length_batches(lengths, max_texts=3, max_tokens=256)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 256
    # sorted by length: the short texts share passes, the long ones go alone
    # sorted by length; a pass holds similar lengths (8 and 60 do not share one)
    assert [sorted(lengths[i] for i in b) for b in batches] == [
        [5, 5, 6],
        [7, 8],
        [60, 61, 64],
        [250],
        [300],
    ]
    assert length_batches([100, 100, 100], 32, 256) == [[0, 1], [2]]  # the token budget
    assert length_batches([16] * 40, 32, 1024) == [list(range(32)), list(range(32, 40))]
    assert length_batches([], 32, 1024) == []


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"backend": "tensorrt"}, "backend"),
        ({"backend": "onnx", "device": "cuda"}, "device"),
        ({"batch_tokens": 0}, "batch_tokens"),
        ({"threads": 0}, "threads"),
    ],
)
def test_bad_backend_arguments_name_the_parameter(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Embedder(**kwargs)


def test_describe_names_the_backend_except_torch() -> None:
    """torch's description is the one every stored policy and simulator cache made
    before backends existed carries, so it stays as it was."""
    assert "backend" not in Embedder().describe()
    assert "embed_backend" not in Featurizer(Embedder()).describe()
    for b in ONNX_BACKENDS:
        assert Embedder(backend=b).describe()["backend"] == b
        assert Featurizer(Embedder(backend=b)).describe()["embed_backend"] == b


def test_check_features_names_both_backends() -> None:
    snap = Snapshot(b"", 1, "0-0", 0, features=features_json(Featurizer(Embedder())))
    for b in ONNX_BACKENDS:
        ours = features_json(Featurizer(Embedder(backend=b)))
        with pytest.raises(PolicyError, match=rf"embed_backend.*'torch'.*'{b}'"):
            check_features("p", snap, ours)
        theirs = Snapshot(b"", 1, "0-0", 0, features=ours)
        with pytest.raises(PolicyError, match=rf"embed_backend.*'{b}'.*'torch'"):
            check_features("p", theirs, snap.features)
        check_features("p", theirs, ours)  # the same backend loads
    int8 = features_json(Featurizer(Embedder(backend="onnx-int8")))
    with pytest.raises(PolicyError, match="'onnx-int8'.*'onnx'"):
        check_features(
            "p",
            Snapshot(b"", 1, "0-0", 0, features=int8),
            features_json(Featurizer(Embedder(backend="onnx"))),
        )


def test_a_published_export_is_not_replaced(tmp_path: Path) -> None:
    """Two first loads racing: the loser's rename fails and the winner's file serves."""
    target = tmp_path / "fp32"
    target.mkdir()
    (target / "model.onnx").write_text("the winner's")

    def build(tmp: Path) -> dict[str, Any]:
        (tmp / "model.onnx").write_text("the loser's")
        return {}

    _publish(target, build)
    assert (target / "model.onnx").read_text() == "the winner's"
    assert [p.name for p in tmp_path.iterdir()] == ["fp32"]  # no temporary left


def test_settings_choose_the_backend() -> None:
    assert Settings().embed_backend == "onnx"
    assert Settings(embed_backend="torch").embed_backend == "torch"
    with pytest.raises(ValueError, match="embed_backend"):
        Settings(embed_backend="tensorrt")  # type: ignore[arg-type]


# --- real model ---------------------------------------------------------------


@pytest.mark.slow
def test_export_is_made_offline_from_the_local_files(export: tuple[Path, list[Any]]) -> None:
    root, attempts = export
    assert attempts == []
    digest_dir = root / model_digest(local_model_dir())
    for kind in ("fp32", "int8"):
        assert (digest_dir / kind / "model.onnx").stat().st_size > 1_000_000
        info = json.loads((digest_dir / kind / "export.json").read_text())
        assert info["probe_min_cosine"] >= MIN_COSINE_TO_TORCH["onnx-int8"]
    info = json.loads((digest_dir / "fp32" / "export.json").read_text())
    assert Path(info["source"]) == local_model_dir()
    assert info["probe_min_cosine"] >= MIN_COSINE_TO_TORCH["onnx"]
    # nothing half-written is left beside the published directories
    assert sorted(p.name for p in digest_dir.iterdir()) == [".lock", "fp32", "int8"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_backend_vectors_match_torch(
    backend: EmbedBackend, backends: dict[EmbedBackend, Embedder], embedder: Embedder
) -> None:
    texts = list(PROMPTS.values())
    assert prepare_text(PROMPTS["empty"]) == prepare_text(PROMPTS["empty literal"]) == ""
    emb = backends[backend]
    got = emb.embed(texts)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    reference = embedder.embed(texts)
    cosines = dict(zip(PROMPTS, np.sum(got * reference, axis=1).tolist(), strict=True))
    low = {k: v for k, v in cosines.items() if v < MIN_COSINE_TO_TORCH[backend]}
    assert not low, low
    single = np.stack([emb.embed_one(t) for t in texts])
    if backend == "onnx":
        # one by one (no padding) gives the batch's vectors
        np.testing.assert_allclose(single, got, atol=1e-4)
    else:
        # int8 activations are scaled per pass, so a vector depends a little on the
        # texts it was embedded with; one by one it is as close to torch's
        alone = dict(zip(PROMPTS, np.sum(single * reference, axis=1).tolist(), strict=True))
        assert min(alone.values()) >= MIN_COSINE_TO_TORCH[backend], alone


@pytest.mark.slow
def test_static_backend_vectors_and_table(
    export: tuple[Path, list[Any]], embedder: Embedder
) -> None:
    """The distilled table is built beside the ONNX export from it (no torch), and its
    vectors are unit vectors that keep the gate's cosine to torch on every prompt."""
    root, _ = export
    emb = Embedder(cache_size=0, backend="static", onnx_dir=root).load()
    assert emb.describe()["backend"] == "static"
    texts = list(PROMPTS.values())
    got = emb.embed(texts)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    reference = embedder.embed(texts)
    cosines = dict(zip(PROMPTS, np.sum(got * reference, axis=1).tolist(), strict=True))
    low = {k: v for k, v in cosines.items() if v < MIN_COSINE_TO_TORCH["static"]}
    assert not low, low
    # the empty text is the model's own [CLS][SEP] vector, not a mean of nothing
    assert cosines["empty"] > 0.999
    # pieces with no row ([UNK] only) embed as the empty text, never as a zero vector
    unknown = emb.embed(["\U0001f642\U0001f642", ""])
    np.testing.assert_allclose(unknown[0], unknown[1], atol=1e-6)
    # a lookup, so a text's vector never depends on the others in its batch
    np.testing.assert_allclose(np.stack([emb.embed_one(t) for t in texts]), got, atol=1e-6)
    table = next(root.glob("*/static-v2/table.npy"))
    assert json.loads((table.parent / "export.json").read_text())["recipe"].endswith("centred")
    with pytest.raises(ValueError, match="embed_device"):
        Embedder(backend="static", device="cuda")


@pytest.mark.slow
def test_tokens_and_window_match_torch(
    backends: dict[EmbedBackend, Embedder], embedder: Embedder
) -> None:
    onnx = backends["onnx"]
    assert onnx.max_seq_length == embedder.max_seq_length == 256
    hf = embedder._load_locked().tokenizer
    for side in ("left", "right"):
        fast = _load_tokenizer(local_model_dir(), side)
        hf.truncation_side = side
        try:
            for text in PROMPTS.values():
                prepared = prepare_text(text)
                assert onnx.num_tokens(text) == embedder.num_tokens(text)
                expected = hf(prepared, truncation=True, max_length=256)["input_ids"]
                assert fast.encode(prepared).ids == expected, (side, text[:40])
        finally:
            hf.truncation_side = "left"


def _published(settings: Settings, embedder: Embedder) -> None:
    """A snapshot of the default policy learned on `embedder`'s features, persisted in
    the settings' state directory as a learner would leave it."""
    featurizer = Featurizer(embedder, projection_dim=settings.projection_dim)
    catalogue = {m.name: m.price() for m in settings.models}
    policy = build_policy("default", settings.policies["default"], catalogue, featurizer.dim)
    snap = Snapshot(policy.to_bytes(), 1, "0-0", 0, features=features_json(featurizer))

    async def publish() -> None:
        store = await open_store(None, settings.state_dir)
        assert await store.publish_snapshot("default", snap, None)
        await store.close()

    asyncio.run(publish())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("learned", "served"), [("torch", "onnx"), ("onnx-int8", "torch"), ("static", "onnx")]
)
def test_a_snapshot_of_another_backend_is_refused_at_start(
    tmp_path: Path,
    export: tuple[Path, list[Any]],
    backends: dict[EmbedBackend, Embedder],
    embedder: Embedder,
    learned: EmbedBackend,
    served: EmbedBackend,
) -> None:
    by_name: dict[EmbedBackend, Embedder] = {"torch": embedder, **backends}
    if learned == "static":
        by_name["static"] = Embedder(cache_size=0, backend="static", onnx_dir=export[0])
    settings = make_settings(tmp_path, embed_backend=served)
    _published(settings, by_name[learned])
    with (
        pytest.raises(Exception, match=rf"embed_backend.*'{learned}'.*'{served}'"),
        TestClient(create_app(settings, embedder=by_name[served])),
    ):
        pass
    # the backend it was learned on serves it
    with TestClient(create_app(settings, embedder=by_name[learned])) as client:
        status = client.get("/readyz")
        assert status.status_code == 200, status.text


def test_every_backend_has_a_gate_threshold() -> None:
    assert set(MIN_COSINE_TO_TORCH) == set(EMBED_BACKENDS)
