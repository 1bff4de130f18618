"""ImageNet-shaped uint8 batches at no decode cost, to measure the train step without a dataset.

`config.data.name = "synthetic_imagenet"` trains on these: 1000 classes, `image_size` pixels,
batches that are pure functions of (seed, step) like every source, so resume stays exact. A fixed
pool of random images is drawn once and each batch gathers from it (a memcpy), because drawing
150 KB of random bytes per example would itself cost more than decoding a JPEG. The labels are
random, so the model cannot learn anything: the point is the throughput of the whole step.
"""

from __future__ import annotations

import numpy as np

from pgf.data.base import ImageSource, epoch_permutation

POOL = 64  # distinct images held in memory
NUM_CLASSES = 1000


class SyntheticImageSource(ImageSource):
  """Random uint8 images and labels with ImageNet's shape; `num_train` nominal examples."""

  channels = 3
  num_classes = NUM_CLASSES

  def __init__(self, global_batch_size: int, seed: int, image_size: int = 224,
               process_index: int = 0, process_count: int = 1, *, num_train: int = 1_281_167,
               num_eval: int = 1000, eval_global_batch_size: int | None = None):
    super().__init__(global_batch_size, seed, process_index, process_count,
                     eval_global_batch_size)
    self.image_size = image_size
    self.num_train, self.num_eval = num_train, num_eval
    rng = np.random.default_rng([seed, 7])
    self._pool = rng.integers(0, 256, (POOL, image_size, image_size, self.channels), np.uint8)
    self._labels = rng.integers(0, NUM_CLASSES, num_train, dtype=np.int32)
    # ImageNet's statistics, so normalised pixels have the usual scale.
    self.mean = (0.485 * 255, 0.456 * 255, 0.406 * 255)
    self.std = (0.229 * 255, 0.224 * 255, 0.225 * 255)

  def _images(self, indices: np.ndarray) -> np.ndarray:
    return self._pool[np.asarray(indices) % POOL]

  def _train_examples(self, indices, step, positions):
    return self._images(indices), self._labels[indices]

  def _eval_examples(self, indices):
    order = epoch_permutation(self.seed + 1, 0, POOL)
    return self._pool[order[np.asarray(indices) % POOL]], self._labels[indices]
