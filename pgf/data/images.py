"""TFDS image classification (imagenet2012, cifar10) via ``tfds.data_source``: random access, no TF.

Why ``tfds.data_source`` and not ``tfds.load``: it reads ArrayRecord files by index and decodes with
PIL/OpenCV, so it needs no TensorFlow, and random access is exactly what a stateless
``batch = f(seed, step)`` pipeline wants (see ``pgf.data.base``). The price is that the dataset must
be prepared in the ``array_record`` format once::

    tfds build imagenet2012 --file_format=array_record --data_dir=DATA_DIR

A dataset prepared as TFRecord (the TFDS default) or not prepared at all raises
``DatasetNotFoundError`` with that command. Nothing here ever downloads (``download=False``).

Preprocessing follows the standard recipes:
  * imagenet2012 train: Inception random-resized crop (area 8%-100%, aspect 3/4-4/3) to
    ``image_size`` + horizontal flip (+ RandAugment when asked); eval: resize shorter side to
    ``image_size / 0.875`` then center crop (256 -> 224).
  * cifar10 train: zero-pad 4 + random 32x32 crop + flip (then resize if ``image_size != 32``);
    eval: identity (resize if ``image_size != 32``).
  * Batches are uint8; the source's ``mean``/``std`` are for normalising on the device.

Decoding reads the record's raw JPEG bytes (``SkipDecoding``), computes the crop box from the
header size, and lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the crop still keeps at least
``image_size`` pixels (PIL's ``draft``); crop and resize are then one PIL resampling pass. Data
sources that cannot hand out raw bytes (tfds's ``mock_data`` without TensorFlow) give decoded
arrays, which take the same path minus the draft.

``train_batches`` runs on grain: ``MapDataset.range(start, stop).map(step -> batch)`` with
``mp_prefetch`` over ``num_workers`` processes, each building whole batches; grain interleaves the
workers' outputs round-robin, so the order (and every byte) is that of ``train_batch(step)`` and
resume stays exact. Batches come back through shared memory.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from pgf.data import augment, randaugment
from pgf.data.base import DatasetNotFoundError, ImageSource, example_rng, missing_dataset_message


@dataclasses.dataclass(frozen=True)
class _DatasetSpec:
  num_classes: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  eval_split: str
  style: str  # "inception" (random resized crop) or "cifar" (pad-and-crop).


DATASETS = {
    "imagenet2012": _DatasetSpec(1000, augment.IMAGENET_MEAN, augment.IMAGENET_STD,
                                 "validation", "inception"),
    "cifar10": _DatasetSpec(10, augment.CIFAR10_MEAN, augment.CIFAR10_STD, "test", "cifar"),
}

CIFAR_PAD = 4
EVAL_CROP_FRACTION = 0.875


def _base_name(name: str) -> str:
  """'imagenet2012:5.1.0' or 'imagenet2012/subset' -> 'imagenet2012'."""
  return name.split(":")[0].split("/")[0]


def default_num_workers() -> int:
  """Worker processes for ``train_batches`` when not given: one per core this process may use, at
  most 128 (each worker holds about ``prefetch + 1`` batches in memory)."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    cores = os.cpu_count() or 1
  return max(1, min(128, cores))


def open_data_source(name: str, split: str, data_dir: str | None,
                     raw_images: bool = False) -> Sequence[dict[str, Any]]:
  """``tfds.data_source`` with every "not there" failure turned into one ``DatasetNotFoundError``.

  What tfds 4.9 does when the data is missing is misleading: with an empty ``data_dir`` it raises
  ``NotImplementedError("Random access data source for file format FileFormat.TFRECORD is not
  supported ...")`` because an unprepared builder defaults to TFRecord; with ``data_dir=None`` and
  ``$TFDS_DATA_DIR`` pointing at an empty folder it is ``KeyError("... splits is empty")``; an
  unknown name raises tfds's own ``DatasetNotFoundError``; missing files surface as
  ``FileNotFoundError``. We convert all of them, and re-raise untouched when the dataset *is*
  prepared as ArrayRecord (then the error is about something else, e.g. a bad split).
  """
  import tensorflow_datasets as tfds  # Lazy: importing tfds costs ~1 s and is only needed here.

  kwargs = {"decoders": {"image": tfds.decode.SkipDecoding()}} if raw_images else {}
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False, **kwargs)
  except (NotImplementedError, FileNotFoundError, AssertionError, KeyError, ValueError) as e:
    if _is_prepared_array_record(tfds, name, data_dir):
      raise  # The data is there; the caller asked for something else that is wrong (e.g. split).
    first_line = (str(e).splitlines() or [""])[0]
    # Name the folder actually searched, even when the caller relied on the TFDS default.
    searched = data_dir or getattr(getattr(tfds.core, "constants", None), "DATA_DIR", None)
    raise DatasetNotFoundError(
        missing_dataset_message(name, searched, f"{type(e).__name__}: {first_line}")) from e


def _is_prepared_array_record(tfds, name: str, data_dir: str | None) -> bool:
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    return builder.is_prepared() and "array_record" in str(builder.info.file_format)
  except Exception:  # pylint: disable=broad-except  # Any failure here means "not usable".
    return False


class TfdsImageSource(ImageSource):
  """One split of a TFDS image classification dataset as an ``ImageSource``.

  A source wraps ONE split: ``train_batch`` samples it (with augmentation when ``train``) and
  ``eval_batches`` sweeps it (always without augmentation); ``num_train`` and ``num_eval`` both
  equal the split length. Build one source per split (``train_and_eval_sources`` does that).

  Args:
    name: "imagenet2012" or "cifar10" (optionally with a ":version").
    split: any TFDS split string, e.g. "train", "validation", "train[:99%]".
    data_dir: TFDS data_dir holding the ArrayRecord-prepared dataset (None: TFDS default).
    global_batch_size: examples per step summed over processes.
    seed: run seed for order and augmentation.
    image_size: output height and width.
    train: apply training augmentation in ``train_batch``.
    process_index, process_count: this process's slot in a multi-host run.
    eval_global_batch_size: batch size of ``eval_batches``; defaults to ``global_batch_size``.
    num_workers: worker processes of ``train_batches`` (and ``eval_batches``); 0 computes batches
      in the calling thread; None: ``default_num_workers()`` (one per core, at most 128).
    prefetch: finished batches each worker may queue (host memory: about ``num_workers *
      (prefetch + 1)`` batches of ``local_batch_size * image_size**2 * 3`` bytes). With many
      workers, 1 already keeps ``num_workers`` batches in flight.
    randaugment: None, or a spec such as "rand-m15-n2-mstd0" (``pgf.data.randaugment``), applied
      to training images after crop and flip.
    draft: let the JPEG decoder work at reduced scale when the crop allows it.
  """

  channels = 3

  def __init__(self, name: str, split: str, data_dir: str | None, global_batch_size: int,
               seed: int, image_size: int, train: bool, process_index: int = 0,
               process_count: int = 1, *, eval_global_batch_size: int | None = None,
               num_workers: int | None = None, prefetch: int = 1,
               randaugment: str | randaugment.RandAugment | None = None, draft: bool = True):
    super().__init__(global_batch_size, seed, process_index, process_count,
                     eval_global_batch_size)
    base = _base_name(name)
    if base not in DATASETS:
      raise ValueError(f"Unsupported image dataset {name!r}; known: {sorted(DATASETS)}.")
    if prefetch < 1:
      raise ValueError(f"prefetch must be >= 1, got {prefetch}.")
    self.name, self.split, self.data_dir, self.train = name, split, data_dir, train
    self.spec = DATASETS[base]
    self.num_classes = self.spec.num_classes
    self.mean, self.std = self.spec.mean, self.spec.std
    self.image_size = image_size
    self.randaugment = _parse_randaugment(randaugment)
    self.draft = draft
    self._source = open_data_source(name, split, data_dir, raw_images=True)
    self.num_train = self.num_eval = len(self._source)
    if self.num_train == 0:
      raise DatasetNotFoundError(missing_dataset_message(name, data_dir, f"split {split!r} is empty"))
    try:
      self._source[0]
    except ImportError:
      # tfds's mock_data re-encodes images through TensorFlow when a decoder is given; without TF,
      # fall back to decoded arrays (same results, no draft decoding).
      self._source = open_data_source(name, split, data_dir, raw_images=False)
    self.num_workers = default_num_workers() if num_workers is None else num_workers
    if self.num_workers < 0:
      raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
    self.prefetch = prefetch

  # --- per-example work -------------------------------------------------------------------------

  def _record(self, index: int) -> tuple[Any, int]:
    example = self._source[int(index)]
    return example["image"], int(example["label"])

  def _augmented(self, index: int, rng: np.random.Generator) -> tuple[Image.Image, int]:
    data, label = self._record(index)
    size = self.image_size
    if self.spec.style == "inception":
      box_fn = functools.partial(_random_box, rng)
      image = augment.decode_crop_resize(data, box_fn, size, draft=self.draft)
    else:
      array = np.asarray(augment.open_image(data).convert("RGB"))
      array = augment.pad_and_random_crop(rng, array, CIFAR_PAD)
      image = Image.fromarray(array)
      if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if self.randaugment is not None:
      image = self.randaugment(image, rng)
    return image, label

  def _plain(self, index: int) -> tuple[Image.Image, int]:
    data, label = self._record(index)
    if self.spec.style == "inception":
      box_fn = functools.partial(augment.center_crop_box, crop_fraction=EVAL_CROP_FRACTION)
    else:
      box_fn = lambda height, width: (0, 0, width, height)
    return augment.decode_crop_resize(data, box_fn, self.image_size, draft=self.draft), label

  # --- batching --------------------------------------------------------------------------------

  def _assemble(self, examples) -> tuple[np.ndarray, np.ndarray]:
    """Writes PIL images straight into one preallocated uint8 batch (no per-image arrays)."""
    examples = list(examples)
    size = self.image_size
    images = np.empty((len(examples), size, size, 3), np.uint8)
    labels = np.empty((len(examples),), np.int32)
    for i, (image, label) in enumerate(examples):
      images[i] = np.asarray(image)
      labels[i] = label
    return images, labels

  def _train_examples(self, indices, step, positions):
    if not self.train:
      return self._assemble(self._plain(i) for i in indices)
    return self._assemble(self._augmented(i, example_rng(self.seed, step, int(p)))
                          for i, p in zip(indices, positions))

  def _eval_examples(self, indices):
    return self._assemble(self._plain(i) for i in indices)

  def train_batches(self, start_step: int = 0, num_steps: int | None = None, *,
                    num_workers: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """``train_batch(start_step)``, ``train_batch(start_step + 1)``, ... computed ahead by
    ``num_workers`` grain worker processes (default: the constructor's), bit-identical to calling
    ``train_batch`` directly. ``num_steps`` None: endless. Close the iterator (``.close()``) to stop
    the workers early; they also stop when it is garbage collected."""
    stop = start_step + (num_steps if num_steps is not None else _ENDLESS)
    return _grain_iterator(self.train_batch, start_step, stop,
                           self.num_workers if num_workers is None else num_workers,
                           self.prefetch)

  def eval_batches(self, *, num_workers: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic sweep over this process's share of the eval split, padded to full batches,
    computed by the same worker processes as ``train_batches``."""
    workers = self.num_workers if num_workers is None else num_workers
    return _grain_iterator(self.eval_batch, 0, self.num_eval_batches,
                           min(workers, self.num_eval_batches), self.prefetch)


_ENDLESS = 2**62


def _parse_randaugment(spec):
  return randaugment.parse(spec)


def _ensure_absl_flags_parsed() -> None:
  """grain reads its options from absl flags; outside an absl app (tests, notebooks) mark the
  flags parsed so their defaults apply instead of raising ``UnparsedFlagAccessError``."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _grain_iterator(fn, start: int, stop: int, num_workers: int,
                    prefetch: int) -> Iterator[dict[str, np.ndarray]]:
  """``fn(start), fn(start + 1), ...`` as a grain pipeline; worker processes when num_workers > 0.

  Each worker receives a pickled copy of ``fn`` (the source, with its tfds data source) and
  computes every ``num_workers``-th element; grain merges them back in order.
  """
  if num_workers == 0:
    return (fn(i) for i in range(start, stop))
  import grain  # pylint: disable=g-import-not-at-top  # Lazy: only the TFDS path needs it.
  _ensure_absl_flags_parsed()
  dataset = grain.MapDataset.range(start, stop).map(fn).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=num_workers, per_worker_buffer_size=prefetch))
  return _PlainArrays(iter(dataset))


class _PlainArrays:
  """Wraps grain's iterator: yields plain ``np.ndarray`` views of its shared-memory arrays (no
  copy; the memory is released when the batch is dropped) and forwards ``close``."""

  def __init__(self, iterator):
    self._iterator = iterator

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      batch = next(self._iterator)
    except StopIteration:
      self.close()
      raise
    return {k: np.asarray(v) for k, v in batch.items()}

  def close(self) -> None:
    """Stops the worker processes and frees the batches they computed ahead."""
    iterator, self._iterator = self._iterator, iter(())
    close = getattr(iterator, "close", None)
    if close is not None:
      close()

  def __del__(self):
    self.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _random_box(rng, height, width):
  return augment.random_resized_crop_box(rng, height, width)


def train_and_eval_sources(name: str, data_dir: str | None, global_batch_size: int, seed: int,
                           image_size: int, process_index: int = 0, process_count: int = 1, *,
                           train_split: str = "train", eval_split: str | None = None,
                           eval_global_batch_size: int | None = None,
                           num_workers: int | None = None, prefetch: int = 1,
                           randaugment: str | None = None,
                           ) -> tuple[TfdsImageSource, TfdsImageSource]:
  """The usual pair: augmented train split (with ``randaugment`` if given) and the dataset's
  standard eval split (never RandAugment)."""
  spec = DATASETS[_base_name(name)]
  common = dict(data_dir=data_dir, global_batch_size=global_batch_size, seed=seed,
                image_size=image_size, process_index=process_index, process_count=process_count,
                eval_global_batch_size=eval_global_batch_size, num_workers=num_workers,
                prefetch=prefetch)
  train = TfdsImageSource(name, train_split, train=True, randaugment=randaugment, **common)
  evaluation = TfdsImageSource(name, eval_split or spec.eval_split, train=False, **common)
  return train, evaluation
