"""The ImageNet input pipeline: grain workers, exact resume, draft decoding, RandAugment, bench.

TFDS is faked with ``tfds.testing.mock_data`` (which serves decoded arrays); the raw-JPEG path runs
on the small ArrayRecord dataset that ``experiments/bench_input.py --smoke`` writes. Tests that
start worker processes pay ~5-10 s each for the spawned interpreters' imports, so there are few.
"""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pgf.data import augment, randaugment
from pgf.data.randaugment import RandAugment

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=10):
    yield


def _source(name="imagenet2012", split="train", size=24, batch=4, train=True, **kwargs):
  from pgf.data.images import TfdsImageSource
  kwargs.setdefault("num_workers", 0)
  return TfdsImageSource(name, split, None, batch, 0, size, train, **kwargs)


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for key in a:
    assert a[key].dtype == b[key].dtype
    np.testing.assert_array_equal(a[key], b[key])


def _photo(height, width, seed=0):
  """Smooth gradients + soft blobs + mild noise: compresses like a photograph."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  image = np.stack([120 + 80 * np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], -1)
  for _ in range(6):
    cy, cx, r = rng.random() * height, rng.random() * width, 20 + rng.random() * height / 4
    mask = np.exp(-(((np.arange(height)[:, None] - cy) ** 2 + (np.arange(width) - cx) ** 2)
                    / (2 * r * r)))
    image += mask[..., None] * rng.uniform(-90, 90, 3)
  image += rng.normal(0, 4, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def _jpeg(array, quality=90):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, "JPEG", quality=quality)
  return buf.getvalue()


# --- iterator API and exact resume -------------------------------------------------------------


def test_train_batches_in_thread_equal_train_batch_and_resume(mock_tfds):
  source = _source(randaugment="rand-m9-n2-mstd0.5")
  batches = list(source.train_batches(3, 4))
  assert len(batches) == 4
  for i, batch in enumerate(batches):
    assert batch["image"].dtype == np.uint8
    _assert_same(batch, source.train_batch(3 + i))
  resumed = next(iter(_source(randaugment="rand-m9-n2-mstd0.5").train_batches(5)))  # Endless.
  _assert_same(resumed, batches[2])


def test_train_batches_with_two_workers_are_bit_identical(mock_tfds):
  """Workers get pickled copies of the source; order and bytes match train_batch, per process."""
  source = _source(batch=6, process_index=1, process_count=2, randaugment="rand-m15-n2-mstd0",
                   num_workers=2, prefetch=1)
  iterator = source.train_batches(7)  # Endless, as the training loop uses it; stopped by close().
  batches = [next(iterator) for _ in range(5)]
  iterator.close()
  assert all(type(b["image"]) is np.ndarray for b in batches)
  for i, batch in enumerate(batches):
    _assert_same(batch, source.train_batch(7 + i))
  with pytest.raises(StopIteration):
    next(iterator)
  # Eval through the same workers is the in-thread sweep.
  evaluation = _source(split="validation", train=False, num_workers=2)
  for a, b in zip(evaluation.eval_batches(), evaluation.eval_batches(num_workers=0), strict=True):
    _assert_same(a, b)
  del batches, batch, a, b


@pytest.mark.parametrize("spec", [None, "rand-m15-n2-mstd0"])
def test_two_processes_partition_the_global_batch(mock_tfds, spec):
  single = _source(batch=6, randaugment=spec).train_batch(4)
  parts = [_source(batch=6, process_index=p, process_count=2, randaugment=spec).train_batch(4)
           for p in range(2)]
  _assert_same(single, {k: np.concatenate([p[k] for p in parts]) for k in single})


def test_eval_batch_of_only_padding_keeps_shape_and_dtype(mock_tfds):
  # 10 examples, global eval batch 8 over 4 processes: process 3 gets no real row in batch 1.
  source = _source(split="validation", train=False, batch=8, process_index=3, process_count=4)
  last = list(source.eval_batches())[-1]
  assert not last["valid"].any() and last["image"].shape == (2, 24, 24, 3)
  assert last["image"].dtype == np.uint8 and not last["image"].any()


def test_randaugment_changes_train_images_only(mock_tfds):
  plain, augmented = _source(), _source(randaugment="rand-m10-n3-mstd0-p1")
  a, b = plain.train_batch(2), augmented.train_batch(2)
  np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(a["image"], b["image"])


# --- draft decoding ----------------------------------------------------------------------------


def test_draft_decode_matches_full_decode():
  data = _jpeg(_photo(1200, 1600))
  size = 128
  for box_fn, expect_reduced in [
      (lambda h, w: (0, 0, w, h), True),  # Whole image: 1/8 scale keeps 150 px >= 128.
      (lambda h, w: (200, 100, 900, 800), True),  # 700 px crop: 1/4 keeps 175 px.
      (lambda h, w: augment.center_crop_box(h, w), True),
      (lambda h, w: (10, 10, 200, 250), False),  # Smaller than 2 * size: full decode.
  ]:
    image = augment.open_image(data)
    reduced, box = augment.draft_for_crop(image, box_fn(1200, 1600), size)
    assert (reduced.size != (1600, 1200)) == expect_reduced
    if expect_reduced:  # The crop keeps at least `size` pixels at the reduced scale.
      assert min(box[2] - box[0], box[3] - box[1]) >= size
    drafted = np.asarray(augment.decode_crop_resize(data, box_fn, size, draft=True))
    full = np.asarray(augment.decode_crop_resize(data, box_fn, size, draft=False))
    assert drafted.shape == full.shape == (size, size, 3) and drafted.dtype == np.uint8
    diff = np.abs(drafted.astype(np.int32) - full.astype(np.int32))
    assert diff.mean() < 2.5 and np.percentile(diff, 99) < 16, (diff.mean(), diff.max())
    if not expect_reduced:
      np.testing.assert_array_equal(drafted, full)


def test_decode_handles_arrays_grey_and_png():
  photo = _photo(60, 80)
  box = lambda h, w: (5, 5, 45, 45)
  from_array = np.asarray(augment.decode_crop_resize(photo, box, 16))
  buf = io.BytesIO()
  Image.fromarray(photo).save(buf, "PNG")
  np.testing.assert_array_equal(np.asarray(augment.decode_crop_resize(buf.getvalue(), box, 16)),
                                from_array)
  grey = np.asarray(augment.decode_crop_resize(_jpeg(photo[..., 0]), box, 16))
  assert grey.shape == (16, 16, 3) and np.array_equal(grey[..., 0], grey[..., 2])


# --- RandAugment -------------------------------------------------------------------------------


def test_randaugment_spec_parsing():
  ra = RandAugment.parse("rand-m15-n2-mstd0")
  assert (ra.magnitude, ra.num_ops, ra.magnitude_std, ra.magnitude_max, ra.prob) == (15, 2, 0, 10,
                                                                                     0.5)
  assert RandAugment.parse("rand-n3-m9-mstd0.5-mmax20-p1") == RandAugment(9, 3, 0.5, 20, 1.0)
  assert randaugment.parse(None) is None and randaugment.parse("") is None
  for spec, bad in [("auto-m9-n2", "'auto'"), ("rand-m9-x2", "'x2'"), ("rand-mfoo", "'mfoo'"),
                    ("rand-n2.5", "'n2.5'"), ("rand-m9-m10", "'m10'"), ("rand-p2", "prob")]:
    with pytest.raises(ValueError, match=bad):
      RandAugment.parse(spec)


def test_randaugment_magnitude_sampling():
  ra = RandAugment.parse("rand-m15-n2-mstd0")
  assert ra.sample_magnitude(3.0) == 10.0  # m15 is clipped to the scale's maximum, 10.
  assert RandAugment.parse("rand-m15-mmax20").sample_magnitude(0.0) == 15.0
  assert RandAugment.parse("rand-m9-mstd1").sample_magnitude(-20.0) == 0.0
  assert RandAugment.parse("rand-m8-mstdinf").sample_magnitude(0.25) == 2.0  # Uniform in [0, m].


def test_randaugment_is_deterministic_per_generator():
  image = Image.fromarray(_photo(48, 40))
  ra = RandAugment.parse("rand-m15-n2-mstd0.5-p1")
  outs = [np.asarray(ra(image, np.random.default_rng([0, 1, s]))) for s in (0, 0, 1, 2, 3)]
  np.testing.assert_array_equal(outs[0], outs[1])
  assert any(not np.array_equal(outs[0], o) for o in outs[2:])
  for out in outs:
    assert out.shape == (48, 40, 3) and out.dtype == np.uint8
  assert np.array_equal(np.asarray(RandAugment(10, 2, prob=0.0)(image, np.random.default_rng(0))),
                        np.asarray(image))


@pytest.mark.parametrize("name", randaugment.OP_NAMES)
def test_each_randaugment_op(name):
  image = Image.fromarray(_photo(48, 40, seed=1))
  array = np.asarray(image)
  op = randaugment.OPS[name]
  for sign in (1.0, -1.0):
    strong = np.asarray(op(image, 1.0, sign))
    assert strong.shape == array.shape and strong.dtype == np.uint8
    assert not np.array_equal(strong, array), (name, sign)
  weak = np.asarray(op(image, 0.0, 1.0))
  if name in ("AutoContrast", "Equalize", "Invert"):
    assert not np.array_equal(weak, array)  # No magnitude: the op always acts.
  else:
    np.testing.assert_array_equal(weak, array)  # Magnitude 0 is the identity.


# --- bench ---------------------------------------------------------------------------------------


def test_bench_input_smoke(tmp_path):
  """Writes a tiny imagenet2012-featured ArrayRecord dataset and runs every contender once; this
  is also the test of the raw-JPEG (SkipDecoding) path through a real tfds data source."""
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "bench_input.py"), "--smoke",
       f"--data_dir={tmp_path}"], capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "reference" in out.stdout and "grain, 1 worker" in out.stdout
  assert "raw JPEG bytes: True" in out.stdout
