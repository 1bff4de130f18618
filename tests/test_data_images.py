"""Tests for the image pipeline: pure-function batches, process slicing, eval padding, errors.

TFDS datasets are faked with ``tfds.testing.mock_data``, which (tfds 4.9.10, no TensorFlow) patches
``tfds.data_source`` to serve deterministic random examples; nothing touches the network.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from pgf.data import augment
from pgf.data.base import DatasetNotFoundError, EpochSampler, eval_index_batches, process_slice
from pgf.data.digits import DigitsSource, load_digits_split

tfds = pytest.importorskip("tensorflow_datasets")

NUM_MOCK = 10
DATASETS = [("imagenet2012", "train", 24), ("cifar10", "train", 32)]


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=NUM_MOCK):
    yield


def _tfds_source(name, split="train", size=32, batch=4, seed=0, train=True, num_workers=0,
                 **kwargs):
  from pgf.data.images import TfdsImageSource
  return TfdsImageSource(name, split, None, batch, seed, size, train, num_workers=num_workers,
                         **kwargs)


def _assert_same_batch(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


# --- base: index bookkeeping -------------------------------------------------------------------


def test_epoch_sampler_wraps_epochs_without_repeats():
  sampler = EpochSampler(seed=3, num_examples=10, global_batch_size=4)
  positions = np.concatenate([sampler.global_indices(s) for s in range(5)])  # 20 = 2 epochs.
  for epoch in positions.reshape(2, 10):
    assert sorted(epoch) == list(range(10))
  assert not np.array_equal(positions[:10], positions[10:])  # Each epoch reshuffles.
  np.testing.assert_array_equal(EpochSampler(3, 10, 4).global_indices(2), sampler.global_indices(2))


@pytest.mark.parametrize("num,batch,procs", [(10, 4, 1), (10, 4, 2), (7, 6, 3), (8, 8, 4)])
def test_eval_index_batches_cover_split_once(num, batch, procs):
  per_process = [list(eval_index_batches(num, batch, p, procs)) for p in range(procs)]
  assert len({len(batches) for batches in per_process}) == 1  # Lockstep across processes.
  seen = []
  for b in range(len(per_process[0])):
    for p in range(procs):
      indices, valid = per_process[p][b]
      assert len(indices) == batch // procs
      seen.extend(indices[valid])
  assert seen == list(range(num))


def test_batch_split_validation():
  assert process_slice(8, 1, 2) == slice(4, 8)
  with pytest.raises(ValueError):
    process_slice(6, 0, 4)
  with pytest.raises(ValueError):
    process_slice(8, 2, 2)


# --- TFDS sources ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,split,size", DATASETS)
def test_tfds_train_batch_shapes_and_ranges(mock_tfds, name, split, size):
  source = _tfds_source(name, split, size=size, batch=4)
  batch = source.train_batch(0)
  assert batch["image"].shape == (4, size, size, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
  assert batch["valid"].dtype == bool and batch["valid"].all()
  assert np.all((batch["label"] >= 0) & (batch["label"] < source.num_classes))
  assert batch["image"].std() > 10  # Real pixels, not a constant.
  # Normalisation happens on the device with these 0..255-scale statistics.
  assert len(source.mean) == len(source.std) == 3
  assert all(50 < m < 200 for m in source.mean) and all(40 < s < 90 for s in source.std)
  assert source.num_train == NUM_MOCK and source.num_classes == {"imagenet2012": 1000,
                                                                 "cifar10": 10}[name]


@pytest.mark.parametrize("name,split,size", DATASETS)
def test_tfds_batches_are_pure_functions_of_seed_and_step(mock_tfds, name, split, size):
  a, b = _tfds_source(name, size=size), _tfds_source(name, size=size)
  _assert_same_batch(a.train_batch(7), b.train_batch(7))
  b.train_batch(3)  # Asking out of order must not matter (no iterator state).
  _assert_same_batch(a.train_batch(2), b.train_batch(2))
  assert not np.array_equal(a.train_batch(2)["image"], a.train_batch(3)["image"])
  other_seed = _tfds_source(name, size=size, seed=1)
  assert not np.array_equal(a.train_batch(2)["image"], other_seed.train_batch(2)["image"])


@pytest.mark.parametrize("name,split,size", DATASETS)
def test_two_processes_make_the_global_batch(mock_tfds, name, split, size):
  single = _tfds_source(name, size=size, batch=6).train_batch(5)
  parts = [_tfds_source(name, size=size, batch=6, process_index=p, process_count=2).train_batch(5)
           for p in range(2)]
  assert parts[0]["image"].shape[0] == 3
  _assert_same_batch(single, {k: np.concatenate([p[k] for p in parts]) for k in single})


@pytest.mark.parametrize("name,split", [("imagenet2012", "validation"), ("cifar10", "test")])
def test_eval_covers_every_example_once_with_padding(mock_tfds, name, split):
  procs = 2
  sources = [_tfds_source(name, split, size=16, batch=4, train=False, process_index=p,
                          process_count=procs) for p in range(procs)]
  sweeps = [list(s.eval_batches()) for s in sources]
  assert len(sweeps[0]) == len(sweeps[1]) == 3 == sources[0].num_eval_batches  # ceil(10 / 4).
  images, labels, valid = [], [], []
  for b in range(3):
    for p in range(procs):
      batch = sweeps[p][b]
      assert batch["image"].shape == (2, 16, 16, 3)
      images.append(batch["image"]), labels.append(batch["label"]), valid.append(batch["valid"])
  valid = np.concatenate(valid)
  assert valid.sum() == NUM_MOCK and valid[:NUM_MOCK].all() and not valid[NUM_MOCK:].any()
  expected_images, expected_labels = sources[0]._eval_examples(np.arange(NUM_MOCK))
  np.testing.assert_array_equal(np.concatenate(images)[valid], expected_images)
  np.testing.assert_array_equal(np.concatenate(labels)[valid], expected_labels)
  # A second sweep is identical (eval is deterministic).
  _assert_same_batch(sweeps[0][0], next(iter(sources[0].eval_batches())))


def test_cifar_eval_is_identity(mock_tfds):
  source = _tfds_source("cifar10", "test", size=32, train=False)
  raw = tfds.data_source("cifar10", split="test", download=False)[0]["image"]
  image, _ = source._eval_examples(np.array([0]))
  np.testing.assert_array_equal(image[0], raw)
  assert source.mean == augment.CIFAR10_MEAN and source.std == augment.CIFAR10_STD


def test_missing_dataset_raises_actionable_error(tmp_path):
  from pgf.data.images import TfdsImageSource
  for name in ("cifar10", "imagenet2012"):
    with pytest.raises(DatasetNotFoundError) as info:
      TfdsImageSource(name, "train", str(tmp_path), 8, 0, 32, True)
    message = str(info.value)
    assert f"tfds build {name} --file_format=array_record --data_dir={tmp_path}" in message
    assert str(tmp_path) in message and ":demo" in message
  assert isinstance(info.value, ValueError)
  assert list(tmp_path.iterdir()) == []  # Nothing was downloaded or created.


def test_missing_dataset_in_default_data_dir(tmp_path):
  """data_dir=None resolves through $TFDS_DATA_DIR, read when tfds is imported: use a subprocess."""
  code = ("from pgf.data.images import TfdsImageSource\n"
          "try:\n  TfdsImageSource('imagenet2012', 'train', None, 8, 0, 32, True)\n"
          "except Exception as e:\n  print(type(e).__name__); print(e)\n")
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path))
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60, cwd=os.path.dirname(os.path.dirname(__file__))).stdout
  assert out.startswith("DatasetNotFoundError"), out
  assert f"tfds build imagenet2012 --file_format=array_record --data_dir={tmp_path}" in out
  assert ":demo" in out
  assert list(tmp_path.iterdir()) == []


def test_augment_random_resized_crop_box_stays_inside():
  rng = np.random.default_rng(0)
  for height, width in [(10, 25), (300, 200), (1, 1), (64, 64)]:
    for _ in range(20):
      left, top, right, bottom = augment.random_resized_crop_box(rng, height, width)
      assert 0 <= left < right <= width and 0 <= top < bottom <= height


# --- embedded digits ---------------------------------------------------------------------------


def test_digits_split_is_fixed_and_stratified():
  train_x, train_y, test_x, test_y = load_digits_split()
  assert len(train_y) == 1497 and len(test_y) == 300
  assert train_x.shape[1:] == (8, 8) and 0 <= train_x.min() and train_x.max() <= 1
  assert np.all(np.bincount(test_y, minlength=10) == 30)
  assert set(train_y) == set(range(10))
  a, b = DigitsSource(32, seed=0), DigitsSource(32, seed=1)  # The run seed never moves the split.
  np.testing.assert_array_equal(a._test_labels, b._test_labels)
  assert (a.num_train, a.num_eval, a.num_classes) == (1497, 300, 10)


@pytest.mark.parametrize("channels", [3, 1])
def test_digits_batches(channels):
  source = DigitsSource(64, seed=0, channels=channels)
  batch = source.train_batch(0)
  assert batch["image"].shape == (64, 32, 32, channels) and batch["image"].dtype == np.uint8
  assert batch["label"].dtype == np.int32 and batch["valid"].all()
  assert len(source.mean) == len(source.std) == channels
  normalised = (batch["image"].astype(np.float32) - source.mean) / source.std
  assert abs(normalised.mean()) < 0.3 and 0.7 < normalised.std() < 1.3
  _assert_same_batch(batch, DigitsSource(64, seed=0, channels=channels).train_batch(0))
  assert not np.array_equal(batch["image"], source.train_batch(1)["image"])
  assert not np.array_equal(batch["label"], DigitsSource(64, seed=5).train_batch(0)["label"])


def test_digits_processes_and_eval():
  single = DigitsSource(32, seed=2, image_size=16).train_batch(100)  # Deep into epoch 2.
  parts = [DigitsSource(32, seed=2, image_size=16, process_index=p, process_count=4).train_batch(100)
           for p in range(4)]
  _assert_same_batch(single, {k: np.concatenate([p[k] for p in parts]) for k in single})

  source = DigitsSource(128, seed=0)
  batches = list(source.eval_batches())
  assert len(batches) == 3 and all(b["image"].shape == (128, 32, 32, 3) for b in batches)
  valid = np.concatenate([b["valid"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])[valid]
  assert valid.sum() == 300 and np.all(np.bincount(labels, minlength=10) == 30)
  padded = batches[-1]["image"][~batches[-1]["valid"]]
  assert padded.shape[0] == 84 and not padded.any()


def test_digits_eval_is_unaugmented_and_train_is_translated():
  source = DigitsSource(8, seed=0, max_shift=0)
  shifted = DigitsSource(8, seed=0)
  # Same examples in the same order; only the translation differs.
  np.testing.assert_array_equal(source.train_batch(0)["label"], shifted.train_batch(0)["label"])
  assert not np.array_equal(source.train_batch(0)["image"], shifted.train_batch(0)["image"])
  first = next(iter(shifted.eval_batches()))["image"]
  np.testing.assert_array_equal(first, next(iter(source.eval_batches()))["image"])
