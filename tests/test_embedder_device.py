"""Where the embedding model runs (service.embedder.resolve_device): "auto" is CUDA
only where the backend sees a CUDA device; asking for CUDA without one is an error
naming embed_device; the micro-batcher is sized for the device."""

from __future__ import annotations

import pytest

from service import embedder
from service.embedder import batch_for, resolve_device, tokens_for


def test_auto_is_the_cpu_on_a_machine_without_cuda() -> None:
    # this machine's real torch and onnxruntime: neither sees a CUDA device here
    import onnxruntime as ort
    import torch

    if torch.cuda.is_available() or "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.fail("this test states what a CPU-only machine does; this one has CUDA")
    assert resolve_device("auto", "torch") == "cpu"
    assert resolve_device("auto", "onnx") == "cpu"
    assert resolve_device("cpu", "onnx-int8") == "cpu"
    for backend in ("torch", "onnx"):
        with pytest.raises(ValueError, match="embed_device"):
            resolve_device("cuda", backend)  # type: ignore[arg-type]


def test_auto_takes_cuda_where_the_backend_sees_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # pure selection logic: what each backend reports is stubbed
    monkeypatch.setattr(embedder, "_torch_cuda", lambda: True)
    monkeypatch.setattr(embedder, "_onnx_cuda", lambda: False)
    assert resolve_device("auto", "torch") == "cuda"
    assert resolve_device("cuda:1", "torch") == "cuda:1"
    assert resolve_device("auto", "onnx") == "cpu"
    with pytest.raises(ValueError, match="onnxruntime has no CUDA"):
        resolve_device("cuda", "onnx")


def test_bad_device_names_are_refused() -> None:
    for bad in ("gpu", "cuda0", "", "tpu"):
        with pytest.raises(ValueError, match="embed_device"):
            resolve_device(bad, "torch")


def test_batches_are_sized_for_the_device() -> None:
    assert batch_for("cpu") == 32 and batch_for("cuda:0") > batch_for("cpu")
    assert tokens_for("cpu") == 512 and tokens_for("cuda") > tokens_for("cpu")


def test_settings_validate_the_device() -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    assert Settings(embed_device="cuda:2").embed_device == "cuda:2"
    with pytest.raises(ValidationError, match="embed_device"):
        Settings(embed_device="gpu")
