"""WMT translation from TFDS: `wmt17_translate/de-en` to train, newstest2014 to evaluate (paper Table 5).

Train on `wmt17_translate/de-en` "train" (5.9M sentence pairs: Europarl v7, Common Crawl, News
Commentary v12, Rapid 2016) and evaluate on `wmt14_translate/de-en` "test", which is newstest2014
(3003 pairs), the test set every En-De paper reports. Both are the defaults of the Flax WMT example,
whose recipe (lr 0.0625 with rsqrt decay) the paper's WMT runs print. `wmt17_translate/de-en`'s own
"validation" (newstest2016) and "test" (newstest2017) are one flag away (`eval_name`, `eval_split`).

Both sides are tokenized with one shared SentencePiece model (32k pieces, T5's ids: pad 0, eos 1,
unk 2; build it with `build_vocabulary` below or `python -m pgf.data.wmt --vocab=PATH`). Every
example is EOS-terminated and padded to fixed lengths (default 256 + 256 tokens); a longer sentence
is truncated keeping its EOS. Examples are padded rather than packed several to a row: pgf's T5 has
no segment ids, so packed rows would attend across sentences.

Like the other TFDS sources, the data are read with `tfds.data_source` (ArrayRecord, no TensorFlow at
read time; prepare once with `tfds build wmt17_translate/de-en --file_format=array_record`), batches
are pure functions of (seed, step), and each process reads only its slice of every global batch.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from pgf.data.text import TextSource, _text, open_tfds_split

TRAIN_NAME = "wmt17_translate/de-en"
EVAL_NAME = "wmt14_translate/de-en"
EVAL_SPLIT = "test"  # wmt14's test split is newstest2014
LANGUAGES = ("de", "en")
VOCAB_SIZE = 32_000


def _register_builders(*names: str) -> None:
  """Imports the TFDS builder modules of `names` (without TensorFlow they are not auto-registered)."""
  for name in names:
    module = name.split("/")[0].replace("_translate", "")  # "wmt17_translate/de-en" -> "wmt17"
    try:
      __import__(f"tensorflow_datasets.translate.{module}")
    except ImportError:
      pass  # not a TFDS WMT module: tfds.data_source then reports the unknown name


class WmtTranslation(TextSource):
  """Sentence pairs `source_language` -> `target_language` (default English -> German) as
  (inputs, targets) token arrays; see the module docstring for the data and the padding."""

  def __init__(self, global_batch_size: int, seed: int, tokenizer, input_length: int = 256,
               target_length: int | None = None, data_dir: str | None = None,
               train_name: str = TRAIN_NAME, train_split: str = "train",
               eval_name: str = EVAL_NAME, eval_split: str = EVAL_SPLIT,
               source_language: str = "en", target_language: str = "de",
               num_eval_examples: int | None = None, process_index: int = 0,
               process_count: int = 1, eval_global_batch_size: int | None = None):
    if {source_language, target_language} != set(LANGUAGES):
      raise ValueError(f"source_language={source_language!r}, target_language="
                       f"{target_language!r}: one of {LANGUAGES} each, different")
    super().__init__(global_batch_size, seed, input_length, target_length or 256, tokenizer,
                     process_index, process_count, eval_global_batch_size)
    self.source_language, self.target_language = source_language, target_language
    _register_builders(train_name, eval_name)
    self._train = open_tfds_split(train_name, train_split, data_dir)
    self._eval = open_tfds_split(eval_name, eval_split, data_dir)
    self.num_train = len(self._train)
    self.num_eval = min(len(self._eval), num_eval_examples or len(self._eval))

  def pair_text(self, example: dict) -> tuple[str, str]:
    """(source sentence, target sentence) of one TFDS example."""
    return _text(example[self.source_language]), _text(example[self.target_language])

  def _encode(self, example: dict) -> tuple[np.ndarray, np.ndarray]:
    eos = np.array([self.tokenizer.eos_id], np.int32)
    source, target = self.pair_text(example)
    return (np.concatenate([self.tokenizer.encode(source), eos]),
            np.concatenate([self.tokenizer.encode(target), eos]))

  def _train_example(self, index, epoch, rng):
    return self._encode(self._train[index])

  def _eval_example(self, index):
    return self._encode(self._eval[index])


def vocabulary_sentences(data_dir: str | None = None, name: str = TRAIN_NAME, split: str = "train",
                         max_pairs: int = 1_000_000) -> Iterator[str]:
  """Both sides of up to `max_pairs` evenly spaced training pairs (German, English, German, ...)."""
  _register_builders(name)
  source = open_tfds_split(name, split, data_dir)
  count = min(len(source), max_pairs)
  for index in np.linspace(0, len(source) - 1, count).round().astype(np.int64):
    example = source[int(index)]
    for language in LANGUAGES:
      yield _text(example[language])


def build_vocabulary(model_file: str, data_dir: str | None = None, name: str = TRAIN_NAME,
                     vocab_size: int = VOCAB_SIZE, max_pairs: int = 1_000_000,
                     num_threads: int = 0) -> str:
  """Trains the shared de/en SentencePiece model on WMT's training pairs; returns `model_file`.

  Unigram model, full character coverage, T5's special ids. `num_threads=0` uses every core (the
  model then may differ in a few pieces from run to run; pass 1 for a reproducible file).
  """
  from pgf.data import tokenizers  # pylint: disable=g-import-not-at-top
  return tokenizers.train_sentencepiece(
      vocabulary_sentences(data_dir, name, max_pairs=max_pairs), model_file, vocab_size,
      max_sentences=2 * max_pairs, num_threads=num_threads or os.cpu_count() or 1)


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  path = build_vocabulary(f.vocab, f.data_dir or None, f.name, f.vocab_size, f.max_pairs)
  print(f"wrote {path}: pass it as --config.data.tokenizer={path}")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("vocab", None, "Where to write the SentencePiece model.", required=True)
  flags.DEFINE_string("data_dir", "", "TFDS data_dir holding the prepared WMT dataset.")
  flags.DEFINE_string("name", TRAIN_NAME, "TFDS dataset whose train split is read.")
  flags.DEFINE_integer("vocab_size", VOCAB_SIZE, "Number of pieces (pad, eos, unk included).")
  flags.DEFINE_integer("max_pairs", 1_000_000, "Training pairs sampled for the vocabulary.")
  app.run(main)
