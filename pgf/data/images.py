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
    ``image_size`` + horizontal flip; eval: resize shorter side to ``image_size / 0.875`` then
    center crop (256 -> 224).
  * cifar10 train: zero-pad 4 + random 32x32 crop + flip (then resize if ``image_size != 32``);
    eval: identity (resize if ``image_size != 32``).
  * Both normalise with the dataset's per-channel mean/std.

Decoding and augmentation of a batch run in a small thread pool: JPEG decoding and PIL resizing
release the GIL, so a few threads scale nearly linearly on ImageNet-sized images.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Any, Callable, Sequence

import numpy as np

from pgf.data import augment
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


def open_data_source(name: str, split: str, data_dir: str | None) -> Sequence[dict[str, Any]]:
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

  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
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
    num_workers: decoding threads; 0 decodes in the calling thread.
  """

  channels = 3

  def __init__(self, name: str, split: str, data_dir: str | None, global_batch_size: int,
               seed: int, image_size: int, train: bool, process_index: int = 0,
               process_count: int = 1, *, eval_global_batch_size: int | None = None,
               num_workers: int | None = None):
    super().__init__(global_batch_size, seed, process_index, process_count,
                     eval_global_batch_size)
    base = _base_name(name)
    if base not in DATASETS:
      raise ValueError(f"Unsupported image dataset {name!r}; known: {sorted(DATASETS)}.")
    self.name, self.split, self.data_dir, self.train = name, split, data_dir, train
    self.spec = DATASETS[base]
    self.mean, self.std = self.spec.mean, self.spec.std  # 0..255 scale, for the device
    self.num_classes = self.spec.num_classes
    self.image_size = image_size
    self._source = open_data_source(name, split, data_dir)
    self.num_train = self.num_eval = len(self._source)
    if self.num_train == 0:
      raise DatasetNotFoundError(missing_dataset_message(name, data_dir, f"split {split!r} is empty"))
    self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None

  # --- per-example work -------------------------------------------------------------------------

  def _read(self, index: int) -> tuple[np.ndarray, int]:
    example = self._source[int(index)]
    image = np.asarray(example["image"])
    if image.ndim == 2:
      image = image[..., None]
    if image.shape[-1] == 1:  # Rare grey JPEGs; the decoder normally returns RGB already.
      image = np.repeat(image, 3, axis=-1)
    return image, int(example["label"])

  def _augmented(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    image, label = self._read(index)
    size = self.image_size
    if self.spec.style == "inception":
      box = augment.random_resized_crop_box(rng, image.shape[0], image.shape[1])
      image = augment.crop_and_resize(image, box, size)
    else:
      image = augment.pad_and_random_crop(rng, image, CIFAR_PAD)
      image = augment.crop_and_resize(image, None, size)
    return augment.random_flip_left_right(rng, image), label

  def _plain(self, index: int) -> tuple[np.ndarray, int]:
    image, label = self._read(index)
    if self.spec.style == "inception":
      box = augment.center_crop_box(image.shape[0], image.shape[1], EVAL_CROP_FRACTION)
      return augment.crop_and_resize(image, box, self.image_size), label
    return augment.crop_and_resize(image, None, self.image_size), label

  # --- batching --------------------------------------------------------------------------------

  def _map(self, fn: Callable[..., tuple[np.ndarray, int]], *args) -> tuple[np.ndarray, np.ndarray]:
    if self.num_workers > 0 and len(args[0]) > 1:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(self.num_workers,
                                                           thread_name_prefix="pgf-images")
      results = list(self._pool.map(fn, *args))
    else:
      results = [fn(*a) for a in zip(*args)]
    images = np.stack([r[0] for r in results])
    labels = np.asarray([r[1] for r in results], np.int32)
    return augment.normalize(images, self.spec.mean, self.spec.std), labels

  def _train_examples(self, indices, step, positions):
    if not self.train:
      return self._map(self._plain, indices)
    rngs = [example_rng(self.seed, step, int(p)) for p in positions]
    return self._map(self._augmented, indices, rngs)

  def _eval_examples(self, indices):
    return self._map(self._plain, indices)

  def close(self) -> None:
    """Stops the decoding threads (optional; they are idle between batches)."""
    if self._pool is not None:
      self._pool.shutdown(wait=True)
      self._pool = None

  def __getstate__(self):  # Thread pools do not pickle; a copy starts its own lazily.
    state = dict(self.__dict__)
    state["_pool"] = None
    return state


def train_and_eval_sources(name: str, data_dir: str | None, global_batch_size: int, seed: int,
                           image_size: int, process_index: int = 0, process_count: int = 1, *,
                           train_split: str = "train", eval_split: str | None = None,
                           eval_global_batch_size: int | None = None,
                           num_workers: int | None = None
                           ) -> tuple[TfdsImageSource, TfdsImageSource]:
  """The usual pair: augmented train split and the dataset's standard eval split."""
  spec = DATASETS[_base_name(name)]
  common = dict(data_dir=data_dir, global_batch_size=global_batch_size, seed=seed,
                image_size=image_size, process_index=process_index, process_count=process_count,
                eval_global_batch_size=eval_global_batch_size, num_workers=num_workers)
  train = TfdsImageSource(name, train_split, train=True, **common)
  evaluation = TfdsImageSource(name, eval_split or spec.eval_split, train=False, **common)
  return train, evaluation
