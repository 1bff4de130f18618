"""Shared machinery for image sources: stateless sampling, per-process slicing, errors.

Every batch is a *pure function* of ``(seed, step, process_index)``. There is no iterator state to
checkpoint: a run that is killed and restarted at step ``s`` asks for ``train_batch(s)`` and gets the
bytes it would have seen. The same property makes multi-host training simple: each process computes
the same global batch of dataset indices and keeps only its contiguous slice, so ``process_count``
processes together see exactly what one process would have seen with the same global batch.

Sampling is "without replacement within an epoch": global example position ``g = step * G + i``
(``G`` the global batch size) belongs to epoch ``g // N`` and reads ``perm_epoch[g % N]``, where
``perm_epoch`` is a permutation seeded by ``(seed, epoch)``. Batches that straddle an epoch boundary
take the tail of one permutation and the head of the next, so no example is dropped or repeated
within an epoch.

Images leave the host as **uint8** (0..255): a quarter of the bytes of float32 to copy and send to the
device. Each source carries per-channel ``mean`` and ``std`` on the 0..255 scale, and the task
normalises on the device inside the jitted step.

``train_batches(start_step)`` iterates ``train_batch(start_step)``, ``train_batch(start_step + 1)``,
... and must yield exactly those arrays, bit for bit; sources may compute them ahead of time in worker
processes (``pgf.data.images`` does, with grain), which changes speed but never content.

Per-example augmentation randomness is seeded by ``(seed, step, g)``, i.e. by the *global* position,
so it does not depend on how many processes share the batch.

NumPy's ``SeedSequence`` ignores trailing zeros (``[s, e]`` and ``[s, e, 0]`` give the same stream),
so each use of the seed carries a distinct tag in the second slot to keep the streams apart.
"""

from __future__ import annotations

import abc
import collections
from typing import Iterator

import numpy as np

_PERMUTATION_TAG = 0
_AUGMENT_TAG = 1


class DatasetNotFoundError(ValueError):
  """A dataset is missing from ``data_dir`` or not prepared in a random-access format."""


def missing_dataset_message(name: str, data_dir: str | None, detail: str = "") -> str:
  """One actionable message: what is missing, where we looked, the command that fixes it."""
  where = data_dir if data_dir else "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
  dir_flag = f" --data_dir={data_dir}" if data_dir else ""
  lines = [
      f"Dataset {name!r} is not available as ArrayRecord in {where}.",
      "pgf reads images with tfds.data_source (random access, no TensorFlow), which needs the dataset",
      "prepared in the array_record file format. Prepare it once with:",
      f"    tfds build {name} --file_format=array_record{dir_flag}",
  ]
  if name.startswith("imagenet"):
    lines.append("(imagenet2012 needs the ILSVRC2012 tars placed in <data_dir>/downloads/manual first.)")
  lines.append(
      "To try pgf without any download, use the config's ':demo' variant (e.g. "
      "--config=configs/vit_1_16.py:demo), which trains on embedded sklearn digits."
  )
  if detail:
    lines.append(f"Underlying error: {detail}")
  return "\n".join(lines)


def check_batch_split(global_batch_size: int, process_index: int, process_count: int) -> int:
  """Validates the process layout and returns the per-process batch size."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"Need 0 <= process_index < process_count, got {process_index}, {process_count}.")
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple of "
        f"process_count={process_count}.")
  return global_batch_size // process_count


def process_slice(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """The contiguous part of a global batch that one process owns."""
  local = check_batch_split(global_batch_size, process_index, process_count)
  return slice(process_index * local, (process_index + 1) * local)


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order in which epoch ``epoch`` visits the ``num_examples`` examples."""
  return np.random.default_rng([seed, _PERMUTATION_TAG, epoch]).permutation(num_examples)


def example_rng(seed: int, step: int, position: int) -> np.random.Generator:
  """Augmentation randomness for the example at global ``position`` of batch ``step``."""
  return np.random.default_rng([seed, _AUGMENT_TAG, step, position])


class EpochSampler:
  """Maps a training step to the dataset indices of its global batch (see module docstring).

  Permutations are cached for the two most recent epochs: consecutive steps reuse them and a batch
  spans at most two epochs when ``global_batch_size <= num_examples``. Larger batches still work,
  they just recompute.
  """

  def __init__(self, seed: int, num_examples: int, global_batch_size: int):
    if num_examples <= 0:
      raise ValueError(f"Cannot sample from an empty split (num_examples={num_examples}).")
    self.seed, self.num_examples, self.global_batch_size = seed, num_examples, global_batch_size
    self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch in self._cache:
      self._cache.move_to_end(epoch)
    else:
      self._cache[epoch] = epoch_permutation(self.seed, epoch, self.num_examples)
      while len(self._cache) > 2:
        self._cache.popitem(last=False)
    return self._cache[epoch]

  def global_indices(self, step: int) -> np.ndarray:
    """Dataset indices (int64, shape ``(global_batch_size,)``) of the global batch at ``step``."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    positions = step * self.global_batch_size + np.arange(self.global_batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, self.num_examples)
    out = np.empty_like(positions)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = self._epoch_order(offsets[sel], int(epoch))
    return out

  def _epoch_order(self, offsets: np.ndarray, epoch: int) -> np.ndarray:
    """The dataset indices at positions `offsets` of epoch `epoch`'s visiting order."""
    return self._permutation(epoch)[offsets]


def eval_index_batches(num_examples: int, global_batch_size: int, process_index: int,
                       process_count: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields ``(indices, valid)`` for this process's share of a sequential sweep of the split.

  The split is cut into ``ceil(num_examples / global_batch_size)`` global batches; the last one is
  padded past the end and padded slots are ``valid == False`` (their index is clamped to a real
  example so callers may read it safely, but should not). Every process yields the *same number* of
  batches, which keeps collective ops in a multi-host eval loop in lockstep, and the union over
  processes covers every example exactly once.
  """
  num_batches = -(-num_examples // global_batch_size)
  for b in range(num_batches):
    yield eval_batch_indices(b, num_examples, global_batch_size, process_index, process_count)


def eval_batch_indices(batch_index: int, num_examples: int, global_batch_size: int,
                       process_index: int, process_count: int) -> tuple[np.ndarray, np.ndarray]:
  """Batch ``batch_index`` of ``eval_index_batches`` without iterating up to it (random access)."""
  part = process_slice(global_batch_size, process_index, process_count)
  positions = batch_index * global_batch_size + np.arange(part.start, part.stop, dtype=np.int64)
  valid = positions < num_examples
  return np.minimum(positions, num_examples - 1), valid


class ImageSource(abc.ABC):
  """Interface every image source implements; the training loop relies on nothing else.

  Attributes:
    num_classes: number of labels.
    image_size: height == width of produced images.
    channels: last axis of produced images.
    num_train: size of the split ``train_batch`` samples from.
    num_eval: size of the split ``eval_batches`` sweeps.
    mean, std: per-channel statistics (tuples of ``channels`` floats, 0..255 scale) with which the
      task normalises images on the device: ``(image - mean) / std``.
    global_batch_size, seed, process_index, process_count: as given.

  Batches are dicts of NumPy arrays: ``image`` uint8 ``(b, H, W, C)`` in 0..255 (not normalised),
  ``label`` int32 ``(b,)`` and ``valid`` bool ``(b,)`` with ``b = global_batch_size //
  process_count``. ``valid`` is all True for training batches and marks padding in the last eval
  batch (padded images are zeros). The image dtype is whatever ``_train_examples`` returns; a
  source that cannot produce uint8 may return float32 already normalised (and set mean=0, std=1).

  Subclasses set the attributes and implement ``_train_examples`` and ``_eval_examples``; the index
  bookkeeping (determinism, process slicing, eval padding) lives here so it is written once.
  """

  num_classes: int
  image_size: int
  channels: int
  num_train: int
  num_eval: int
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __init__(self, global_batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1, eval_global_batch_size: int | None = None):
    self.global_batch_size = global_batch_size
    self.eval_global_batch_size = eval_global_batch_size or global_batch_size
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count
    self.local_batch_size = check_batch_split(global_batch_size, process_index, process_count)
    check_batch_split(self.eval_global_batch_size, process_index, process_count)
    self._sampler: EpochSampler | None = None

  @abc.abstractmethod
  def _train_examples(self, indices: np.ndarray, step: int,
                      positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 (n,H,W,C), labels int (n,)) for train-split ``indices``.

    ``positions`` are the global batch positions, for seeding augmentation via ``example_rng``.
    """

  @abc.abstractmethod
  def _eval_examples(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8, labels) for eval-split ``indices``, deterministically."""

  def train_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's share of the global training batch at ``step`` (pure in seed and step)."""
    if self._sampler is None:
      self._sampler = EpochSampler(self.seed, self.num_train, self.global_batch_size)
    part = process_slice(self.global_batch_size, self.process_index, self.process_count)
    indices = self._sampler.global_indices(step)[part]
    positions = np.arange(part.start, part.stop, dtype=np.int64)
    images, labels = self._train_examples(indices, step, positions)
    return {"image": images, "label": labels.astype(np.int32),
            "valid": np.ones(len(indices), dtype=bool)}

  def train_batches(self, start_step: int = 0,
                    num_steps: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yields ``train_batch(start_step)``, ``train_batch(start_step + 1)``, ... (``num_steps`` of
    them, or forever). Subclasses may prefetch in parallel but must yield the same arrays."""
    step = start_step
    while num_steps is None or step < start_step + num_steps:
      yield self.train_batch(step)
      step += 1

  def eval_batch(self, batch_index: int) -> dict[str, np.ndarray]:
    """Batch ``batch_index`` of ``eval_batches`` (random access; padded rows are zeros)."""
    indices, valid = eval_batch_indices(batch_index, self.num_eval, self.eval_global_batch_size,
                                        self.process_index, self.process_count)
    if valid.any():
      real_images, real_labels = self._eval_examples(indices[valid])
      image = np.zeros((len(indices),) + real_images.shape[1:], real_images.dtype)
      image[valid] = real_images
    else:  # Only padding (possible for the last batch of a late process): same shape and dtype.
      image = np.zeros_like(self._eval_examples(indices[:1])[0]).repeat(len(indices), axis=0)
      real_labels = np.zeros((0,), np.int32)
    label = np.zeros((len(indices),), np.int32)
    label[valid] = real_labels
    return {"image": image, "label": label, "valid": valid}

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic sweep over this process's share of the eval split, padded to full batches."""
    for b in range(self.num_eval_batches):
      yield self.eval_batch(b)

  @property
  def num_eval_batches(self) -> int:
    return -(-self.num_eval // self.eval_global_batch_size)

  def steps_per_epoch(self) -> float:
    return self.num_train / self.global_batch_size
