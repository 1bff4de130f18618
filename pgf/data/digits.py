"""sklearn's embedded 8x8 handwritten digits as an ImageSource: real images, zero downloads.

This is the data behind every ``:demo`` config: 1797 scanned digits (UCI optdigits, values 0..16)
ship inside scikit-learn, so a fresh laptop can train a small ViT end to end in minutes.

Choices and why:
  * The train/test split is stratified (30 test images per class, 300 in total) and fixed by a
    module constant, *not* the run seed: changing the seed must not change what "test accuracy"
    measures, or seed-to-seed variance would be confounded with split variance.
  * Images are upsampled once, at construction, with bilinear interpolation so that patch sizes
    designed for real images (4 at 32 px gives 8x8 = 64 tokens) make sense.
  * Batches are uint8 on the 0..255 scale, like every image source; the task normalises them on
    the device with the train split's scalar mean/std (the images are grey), giving roughly zero
    mean and unit variance; the statistics depend only on the fixed split and image size.
  * Training augmentation is a small random translation with zero (background) padding. No flips:
    a mirrored 2 or 5 is not the same digit.
"""

from __future__ import annotations

import functools

import numpy as np

from pgf.data import augment
from pgf.data.base import ImageSource, example_rng

SPLIT_SEED = 20240207  # Fixes the train/test split forever; independent of any run seed.
TEST_PER_CLASS = 30
NUM_CLASSES = 10


@functools.lru_cache(maxsize=1)
def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Returns (train_images, train_labels, test_images, test_labels), images float in [0, 1], 8x8.

  The split takes ``TEST_PER_CLASS`` random examples of every class for test; both splits are
  sorted by original index so the result does not depend on dict or set ordering.
  """
  from sklearn.datasets import load_digits  # Imported lazily: only the digits source needs it.

  digits = load_digits()
  images = digits.images.astype(np.float32) / 16.0
  labels = digits.target.astype(np.int32)
  rng = np.random.default_rng(SPLIT_SEED)
  test_mask = np.zeros(len(labels), dtype=bool)
  for cls in range(NUM_CLASSES):
    members = np.flatnonzero(labels == cls)
    test_mask[rng.choice(members, size=TEST_PER_CLASS, replace=False)] = True
  return images[~test_mask], labels[~test_mask], images[test_mask], labels[test_mask]


class DigitsSource(ImageSource):
  """Embedded sklearn digits: 1497 train / 300 test images, 10 classes.

  Args:
    global_batch_size: examples per training step summed over processes.
    seed: run seed; drives the per-epoch order and augmentation, never the split.
    image_size: output height and width (bilinear upsampling from 8).
    process_index, process_count: this process's slot in a multi-host run.
    channels: 3 (grey replicated, drop-in for RGB models) or 1.
    max_shift: largest random translation in pixels at ``image_size``; default ``image_size // 8``
      (one original pixel), 0 disables augmentation.
    eval_global_batch_size: batch size of ``eval_batches``; defaults to ``global_batch_size``.
  """

  num_classes = NUM_CLASSES

  def __init__(self, global_batch_size: int, seed: int, image_size: int = 32,
               process_index: int = 0, process_count: int = 1, *, channels: int = 3,
               max_shift: int | None = None, eval_global_batch_size: int | None = None):
    super().__init__(global_batch_size, seed, process_index, process_count,
                     eval_global_batch_size)
    if channels not in (1, 3):
      raise ValueError(f"channels must be 1 or 3, got {channels}.")
    self.image_size = image_size
    self.channels = channels
    self.max_shift = image_size // 8 if max_shift is None else max_shift
    train_x, train_y, test_x, test_y = load_digits_split()
    # Kept unnormalised in [0, 1] so translation pads with the true background value 0.
    self._train_images = augment.resize_bilinear(train_x, image_size)
    self._test_images = augment.resize_bilinear(test_x, image_size)
    self._train_labels, self._test_labels = train_y, test_y
    # Per-channel statistics on the 0..255 scale of the uint8 batches (grey: one value each).
    pixels = self._train_images * 255.0
    self.mean = (float(pixels.mean()),) * channels
    self.std = (float(pixels.std()),) * channels
    self.num_train, self.num_eval = len(train_y), len(test_y)

  def _finish(self, images: np.ndarray) -> np.ndarray:
    images = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(images[..., None], self.channels, axis=-1)

  def _train_examples(self, indices, step, positions):
    images = self._train_images[indices]
    if self.max_shift > 0:
      images = np.stack([
          augment.pad_and_random_crop(example_rng(self.seed, step, int(pos)), image, self.max_shift)
          for image, pos in zip(images, positions)
      ])
    return self._finish(images), self._train_labels[indices]

  def _eval_examples(self, indices):
    return self._finish(self._test_images[indices]), self._test_labels[indices]
