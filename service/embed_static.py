"""The static backend: one vector per word piece, distilled from the same model.

For deployments that need microseconds a query. Each word piece of the model's
vocabulary is embedded once, alone between the model's [CLS] and [SEP], by the fp32
ONNX graph (so torch is never needed); a sentence is then the weighted mean of its
pieces' vectors, normalised. The weights down-weight frequent pieces (smooth inverse
frequency over the vocabulary's rank, as in model2vec's distillation), since "the" says
little about which model should answer. The table lives beside the ONNX exports
(`<onnx dir>/<model digest>/static-v2/table.npy`), made once from the local files only.

No attention means no context: the vectors stray from torch's far more than int8's do
(see MIN_COSINE_TO_TORCH), which is why this backend is opt-in, never the default.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import numpy as np

from service.embedder import (
    EMBEDDING_DIM,
    ONNX_EXPORT_VERSION,
    TruncationSide,
    _load_tokenizer,
    _publish,
    _session,
    _tokenizers,
    default_onnx_dir,
    local_model_dir,
    model_digest,
    onnx_model_file,
)

STATIC_RECIPE = "static/v2-centred"
# the recipe names the directory, so a changed recipe never serves an old table
_STATIC_DIR = "static-v2"
_TABLE_FILE = "table.npy"
# model2vec's default: a piece as frequent as 1e-4 of all pieces keeps half its weight
SIF_COEFFICIENT = 1e-4
_DISTILL_BATCH = 512


def static_table_file(onnx_dir: str | os.PathLike[str] | None = None) -> Path:
    """The distilled table (vocabulary + 1 rows; the last is the empty text's vector),
    made on first use under a file lock and published atomically, like the ONNX
    exports."""
    model_dir = local_model_dir()
    root = Path(onnx_dir if onnx_dir is not None else default_onnx_dir()) / model_digest(model_dir)
    table = root / _STATIC_DIR / _TABLE_FILE
    if table.exists():
        return table
    fp32 = onnx_model_file("onnx", onnx_dir)
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not table.exists():
            _publish(
                root / _STATIC_DIR,
                lambda tmp: _distill(model_dir, fp32, tmp / _TABLE_FILE),
                artifact=_TABLE_FILE,
            )
    return table


def sif_weights(vocab_size: int, first_word: int) -> np.ndarray:
    """Smooth inverse frequency by rank: pieces are assumed Zipf-distributed in id order
    from `first_word` (the ids before it are special and unused pieces)."""
    ranks = np.arange(vocab_size, dtype=np.float64) - first_word + 2
    ranks[:first_word] = np.inf
    proba = (1.0 / ranks) / np.sum(1.0 / ranks[first_word:])
    return SIF_COEFFICIENT / (SIF_COEFFICIENT + proba)


def _distill(model_dir: Path, fp32: Path, dest: Path) -> dict[str, Any]:
    tokenizer = _load_tokenizer(model_dir, "right")
    vocab = tokenizer.get_vocab()
    size = tokenizer.get_vocab_size()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    # BERT's vocabulary: [PAD], [unused*], [UNK], [CLS], [SEP], [MASK], then real pieces
    first_word = max(vocab["[MASK]"], *(i for t, i in vocab.items() if t.startswith("[unused"))) + 1
    session = _session(fp32, os.cpu_count() or 1)
    table = np.zeros((size + 1, EMBEDDING_DIM), dtype=np.float32)
    for start in range(first_word, size, _DISTILL_BATCH):
        ids = np.arange(start, min(start + _DISTILL_BATCH, size), dtype=np.int64)
        batch = np.stack([np.full_like(ids, cls), ids, np.full_like(ids, sep)], axis=1)
        (vectors,) = session.run(
            ["sentence_embedding"], {"input_ids": batch, "attention_mask": np.ones_like(batch)}
        )
        table[ids] = vectors
    # every piece's vector carries the same [CLS]/[SEP] component; removed, the mean of
    # a text's pieces follows its words (mean cosine to torch 0.43 against 0.37 on
    # llmrouter prompts)
    table[first_word:size] -= table[first_word:size].mean(axis=0)
    table[:size] *= sif_weights(size, first_word)[:, None].astype(np.float32)
    empty = np.array([[cls, sep]], dtype=np.int64)
    (vector,) = session.run(
        ["sentence_embedding"], {"input_ids": empty, "attention_mask": np.ones_like(empty)}
    )
    table[size] = vector[0]
    np.save(dest, table)
    return {
        "source": str(fp32),
        "recipe": f"{ONNX_EXPORT_VERSION}+{STATIC_RECIPE}",
        "sif_coefficient": SIF_COEFFICIENT,
        "first_word": first_word,
    }


class StaticEncoder:
    """Weighted mean of the table's rows over a text's word pieces; numpy only."""

    def __init__(
        self, truncation_side: TruncationSide, onnx_dir: str | os.PathLike[str] | None
    ) -> None:
        self.path = static_table_file(onnx_dir)
        self.table: np.ndarray = np.load(self.path)
        self._empty = self.table.shape[0] - 1
        self.tokenizer, self._counter, self.max_seq_length = _tokenizers(truncation_side)
        # the model's window holds [CLS] and [SEP]; the pieces get the rest, as in torch
        self.tokenizer.enable_truncation(
            max_length=self.max_seq_length - 2, direction=truncation_side
        )

    def encode(self, texts: list[str], max_texts: int, max_tokens: int) -> np.ndarray:
        del max_texts, max_tokens  # no forward pass, so nothing to batch
        if not texts:
            return np.empty((0, EMBEDDING_DIM), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        pieces = [e.ids if e.ids else [self._empty] for e in encodings]
        lengths = np.array([len(p) for p in pieces])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        flat = np.fromiter((i for p in pieces for i in p), dtype=np.int64, count=int(lengths.sum()))
        sums = np.add.reduceat(self.table[flat], starts, axis=0)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        # only [UNK] and other rows left at zero (e.g. a text of emoji): no words to
        # follow, so it is embedded as the empty text rather than a zero vector
        blank = norms[:, 0] < 1e-9
        sums[blank], norms[blank] = self.table[self._empty], 1.0
        return (sums / norms).astype(np.float32)

    def num_tokens(self, text: str) -> int:
        return len(self._counter.encode(text).ids)
