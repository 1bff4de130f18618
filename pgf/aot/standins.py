"""Shape-only stand-ins for datasets and tokenizers that are not on this machine.

`pgf.aot` compiles the trainer's steps from abstract inputs; the task still wants its data
source for shapes (image size, classes, sequence lengths) and a tokenizer for the vocabulary
size. Where the real one cannot be opened (an ImageNet, C4, WMT or lm1b config on a laptop), or
the config leaves a SentencePiece model for the user to name, these stand in with the same
shapes and sizes, and `notes` says what was assumed.
"""

from __future__ import annotations

import contextlib

import numpy as np

__all__ = ["data_free"]

IMAGE_TRAIN_SIZES = {"imagenet2012": 1_281_167, "cifar10": 50_000}
T5_SENTENCEPIECE_PIECES = 32_000  # T5's cc_all.32000 model (+ num_extra_ids sentinels)
# What config.data.tokenizer="" (a SentencePiece model the user builds and names; the config
# checks refuse an empty path) becomes while compiling: a path no file has, so that building
# the tokenizer fails and the stand-in vocabulary takes over.
NO_TOKENIZER = "<no SentencePiece model given: stand-in>"


class _ImageSource:
  channels = 3

  def __init__(self, name: str, image_size: int, batch: int):
    from pgf.data import images  # pylint: disable=g-import-not-at-top
    spec = images.DATASETS[name]
    self.num_classes, self.mean, self.std = spec.num_classes, spec.mean, spec.std
    self.image_size, self.global_batch_size = image_size, batch
    self.num_train = self.num_eval = IMAGE_TRAIN_SIZES.get(name, 1_000_000)


class _Tokenizer:
  pad_id, eos_id, unk_id = 0, 1, 2

  def __init__(self, vocab_size: int, num_extra_ids: int):
    self.vocab_size, self.num_extra_ids = vocab_size, num_extra_ids

  @property
  def first_sentinel_id(self) -> int:
    return self.vocab_size - self.num_extra_ids


class _TextSource:
  def __init__(self, input_length: int, target_length: int, batch: int, tokenizer):
    self.input_length, self.target_length = input_length, target_length
    self.global_batch_size, self.tokenizer = batch, tokenizer
    self.num_train = self.num_eval = 1_000_000


@contextlib.contextmanager
def data_free(config, notes: list[str]):
  """Within the block, building the config's task never opens a dataset it cannot find: image
  and text sources and SentencePiece tokenizers are replaced by shape-only stand-ins when the
  real ones fail to open (each replacement is appended to `notes`)."""
  from pgf.train import tasks, text_tasks  # pylint: disable=g-import-not-at-top
  real_images = tasks.build_image_sources
  real_tokenizer, real_text = text_tasks.build_tokenizer, text_tasks.build_text_source

  def image_sources(config, process_index, process_count):
    try:
      return real_images(config, process_index, process_count)
    except Exception as e:  # pylint: disable=broad-except
      name = config.data.name
      source = _ImageSource(name, config.data.image_size, config.batch_size)
      notes.append(f"data {name!r} not readable here ({type(e).__name__}): stand-in images "
                   f"{config.data.image_size}x{config.data.image_size}x3 uint8, "
                   f"{source.num_classes} classes")
      return source, source

  def standin_tokenizer(real, data_config, extra: int, vocab: int):
    try:
      return real(data_config)
    except Exception as e:  # pylint: disable=broad-except
      notes.append(f"tokenizer {data_config.get('tokenizer')!r} not readable here "
                   f"({type(e).__name__}): stand-in vocabulary of {vocab} ids")
      return _Tokenizer(vocab, extra)

  def real_source_or_why(real, config, tok, process_index, process_count):
    """(the real source, None), or (None, why it is not used)."""
    if isinstance(tok, _Tokenizer):
      return None, "stand-in tokenizer"
    try:
      return real(config, tok, process_index, process_count), None
    except Exception as e:  # pylint: disable=broad-except
      return None, type(e).__name__

  def tokenizer(data_config):
    extra = data_config.get("num_extra_ids", 100)
    return standin_tokenizer(real_tokenizer, data_config, extra,
                             config.model.get("vocab_size", 0) or T5_SENTENCEPIECE_PIECES + extra)

  def text_source(config, tok, process_index=0, process_count=1):
    source, why = real_source_or_why(real_text, config, tok, process_index, process_count)
    if source is not None:
      return source
    from pgf.data import span_corruption  # pylint: disable=g-import-not-at-top
    data = config.data
    target = data.get("target_length") or 0
    if not target and text_tasks.dataset_kind(data.name) == "span_corruption":
      target = span_corruption.random_spans_helper(
          data.input_length, data.get("noise_density", 0.15),
          data.get("mean_noise_span_length", 3.0))[1]
    target = target or 8  # classification labels: a few pieces
    notes.append(f"data {data.name!r} not readable here ({why}): stand-in token batches "
                 f"inputs {data.input_length}, targets {target}")
    return _TextSource(data.input_length, target, config.batch_size, tok)

  # The decoder-only LM family builds its own tokenizer and token source (pgf/families/gpt.py).
  from pgf.data import lm  # pylint: disable=g-import-not-at-top
  from pgf.families import gpt  # pylint: disable=g-import-not-at-top
  real_lm_tokenizer, real_lm_source, real_counts = gpt.build_tokenizer, gpt.build_source, \
      lm.byte_counts

  def lm_tokenizer(data_config):
    return standin_tokenizer(real_lm_tokenizer, data_config, 0,
                             config.model.get("vocab_size", 0) or T5_SENTENCEPIECE_PIECES)

  def lm_source(config, tok, process_index=0, process_count=1):
    source, why = real_source_or_why(real_lm_source, config, tok, process_index, process_count)
    if source is not None:
      return source
    seq_len = config.data.seq_len
    notes.append(f"data {config.data.name!r} not readable here ({why}): stand-in token "
                 f"batches of {seq_len} tokens")
    return _TextSource(seq_len, seq_len, config.batch_size, tok)

  def byte_counts(tok):
    return np.ones(tok.vocab_size, np.int64) if isinstance(tok, _Tokenizer) else real_counts(tok)

  data = config.get("data") or {}
  unnamed = "tokenizer" in data and data.tokenizer == ""
  if unnamed:
    config.data.tokenizer = NO_TOKENIZER
    notes.append("config.data.tokenizer is empty (a SentencePiece model you build and name): "
                 "compiled with a stand-in of the model's vocabulary size")
  tasks.build_image_sources = image_sources
  text_tasks.build_tokenizer, text_tasks.build_text_source = tokenizer, text_source
  gpt.build_tokenizer, gpt.build_source, lm.byte_counts = lm_tokenizer, lm_source, byte_counts
  try:
    yield
  finally:
    tasks.build_image_sources = real_images
    text_tasks.build_tokenizer, text_tasks.build_text_source = real_tokenizer, real_text
    gpt.build_tokenizer, gpt.build_source, lm.byte_counts = (real_lm_tokenizer, real_lm_source,
                                                             real_counts)
    if unnamed:
      config.data.tokenizer = ""


def example_arrays(example: dict, batch: int) -> dict:
  """The task's one-row example batch widened to `batch` rows (shapes and dtypes only)."""
  return {k: np.zeros((batch,) + np.asarray(v).shape[1:], np.asarray(v).dtype)
          for k, v in example.items()}
