"""Tokenizers with T5's id conventions: 0 pad, 1 eos, 2 unk, sentinels at the top of the vocabulary.

`ByteTokenizer` (ByT5-style) needs no vocabulary file, so every demo and test runs offline; the
`SentencePieceTokenizer` wraps a SentencePiece model with those ids -- T5's own 32k vocabulary for
C4/GLUE, or one trained with `train_sentencepiece` (e.g. the 32k WMT de-en vocabulary of
pgf/data/wmt.py). Both expose the same small interface, which is all `span_corruption` and the text sources use:

    vocab_size, pad_id, eos_id, unk_id, num_extra_ids, sentinel_id(i), is_sentinel(ids),
    encode(text) -> int32 array (no EOS), decode(ids) -> str (stops at the first EOS)

Sentinel `i` is `vocab_size - 1 - i` in both (T5's `<extra_id_0>` is the last id), so span-corrupted
targets read `<extra_id_0> ... <extra_id_1> ...` whatever the tokenizer.
"""

from __future__ import annotations

import io
import os
from typing import Iterable, Sequence

import numpy as np

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


class _Sentinels:
  """Sentinel bookkeeping shared by both tokenizers (sentinels occupy the top `num_extra_ids` ids)."""

  vocab_size: int
  num_extra_ids: int
  pad_id, eos_id, unk_id = PAD_ID, EOS_ID, UNK_ID

  def sentinel_id(self, i: int) -> int:
    """Id of `<extra_id_i>`; i = 0 is the first sentinel (the highest id)."""
    if not 0 <= i < self.num_extra_ids:
      raise ValueError(f"Sentinel index {i} outside [0, {self.num_extra_ids}).")
    return self.vocab_size - 1 - i

  @property
  def first_sentinel_id(self) -> int:
    """The lowest sentinel id: every id >= this is a sentinel, every text id is below it."""
    return self.vocab_size - self.num_extra_ids

  def is_sentinel(self, ids) -> np.ndarray:
    return np.asarray(ids) >= self.first_sentinel_id

  def _sentinel_text(self, token: int) -> str:
    return f"<extra_id_{self.vocab_size - 1 - token}>"


class ByteTokenizer(_Sentinels):
  """UTF-8 bytes offset by 3 (ids 3..258), then `num_extra_ids` sentinels: vocab 259 + num_extra_ids.

  Byte-level modelling (Xue et al. 2022, ByT5) sidesteps vocabulary files and handles any Unicode;
  sequences are ~4x longer than SentencePiece ones for English.
  """

  offset = 3

  def __init__(self, num_extra_ids: int = 100):
    self.num_extra_ids = num_extra_ids
    self.vocab_size = self.offset + 256 + num_extra_ids

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self.offset

  def decode(self, ids: Sequence[int] | np.ndarray, render_sentinels: bool = True) -> str:
    """Text up to the first EOS; pad/unk dropped, sentinels as `<extra_id_i>` (or dropped).

    Invalid UTF-8 (a model's byte soup, or a window cut mid-character) becomes U+FFFD.
    """
    ids = _until_eos(ids)
    pieces, run = [], bytearray()
    for token in ids.tolist():
      if self.offset <= token < self.offset + 256:
        run.append(token - self.offset)
        continue
      if token >= self.first_sentinel_id and render_sentinels:
        pieces.append(run.decode("utf-8", errors="replace"))
        run = bytearray()
        pieces.append(self._sentinel_text(token))
    pieces.append(run.decode("utf-8", errors="replace"))
    return "".join(pieces)


class SentencePieceTokenizer(_Sentinels):
  """A T5 SentencePiece model (e.g. `gs://t5-data/vocabs/cc_all.32000/sentencepiece.model`) + sentinels.

  Like t5's `SentencePieceVocabulary`, the `num_extra_ids` sentinels are appended after the model's own
  pieces (32000 + 100 = 32100 for T5; the model's embedding is usually padded to 32128).
  """

  def __init__(self, model_file: str, num_extra_ids: int = 100):
    sentencepiece = _import_sentencepiece("SentencePieceTokenizer")
    self.model_file = model_file
    self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    self.num_extra_ids = num_extra_ids
    self.vocab_size = self._sp.get_piece_size() + num_extra_ids
    if (self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id()) != (PAD_ID, EOS_ID, UNK_ID):
      raise ValueError(
          f"{model_file}: expected T5 ids pad=0, eos=1, unk=2, got pad={self._sp.pad_id()}, "
          f"eos={self._sp.eos_id()}, unk={self._sp.unk_id()}.")

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray, render_sentinels: bool = True) -> str:
    ids = _until_eos(ids)
    pieces, run = [], []
    for token in ids.tolist():
      if token >= self.first_sentinel_id:
        pieces.append(self._sp.decode(run))
        run = []
        if render_sentinels:
          pieces.append(self._sentinel_text(token))
      elif token not in (PAD_ID, UNK_ID):
        run.append(token)
    pieces.append(self._sp.decode(run))
    return "".join(pieces)


def train_sentencepiece(sentences: Iterable[str], model_file: str, vocab_size: int = 32000,
                        model_type: str = "unigram", character_coverage: float = 1.0,
                        max_sentences: int = 10_000_000, seed_sentencepiece_size: int = 1_000_000,
                        num_threads: int = 1) -> str:
  """Trains a SentencePiece model with T5's ids (pad 0, eos 1, unk 2, no bos); returns `model_file`.

  `sentences` is any iterable of strings (e.g. the source and target sides of a translation corpus,
  interleaved, for a shared vocabulary). SentencePiece samples at most `max_sentences` of them.
  The model is written atomically (a temporary file, then a rename), so a half-written vocabulary
  never shadows a good one. With `num_threads=1` the same sentences give the same model.
  """
  sentencepiece = _import_sentencepiece("train_sentencepiece")
  if vocab_size <= 3:
    raise ValueError(f"vocab_size={vocab_size}: must exceed the 3 special ids (pad, eos, unk)")
  proto = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=proto, vocab_size=vocab_size,
      model_type=model_type, character_coverage=character_coverage,
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      input_sentence_size=max_sentences, shuffle_input_sentence=True,
      seed_sentencepiece_size=seed_sentencepiece_size, num_threads=num_threads, minloglevel=2)
  model_file = os.fspath(model_file)
  directory = os.path.dirname(model_file)
  if directory:
    os.makedirs(directory, exist_ok=True)
  partial = f"{model_file}.tmp{os.getpid()}"
  with open(partial, "wb") as f:
    f.write(proto.getvalue())
  os.replace(partial, model_file)
  return model_file


def _import_sentencepiece(what: str):
  try:
    import sentencepiece  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"{what} needs the sentencepiece package: `pip install sentencepiece`. "
        "Without it, use ByteTokenizer (no vocabulary file needed).") from e
  return sentencepiece


def _until_eos(ids) -> np.ndarray:
  ids = np.asarray(ids, np.int64).reshape(-1)
  eos = np.flatnonzero(ids == EOS_ID)
  return ids[: eos[0]] if eos.size else ids

