"""Training images/s of the ImageNet input pipeline at 224 px, on an ImageNet-like ArrayRecord set.

    python experiments/bench_input.py --data_dir=/tmp/imnet_bench --make=512
    python experiments/bench_input.py --data_dir=/tmp/imnet_bench          # reuse it
    python experiments/bench_input.py --smoke --data_dir=/tmp/x            # seconds; a test runs it

``--make N`` writes a real TFDS ``imagenet2012`` dataset in the ``array_record`` format (tfds's own
features serialise the records, no TensorFlow needed): N photo-like JPEGs of 500x375 at quality 90
(smooth gradients, soft shapes and sensor-like noise, ~100 KB each like ILSVRC photos) for
``train`` and N/8 for ``validation``, random labels. ``TfdsImageSource`` reads it unchanged.

Contenders, one process, one after another (each sees whatever else runs on the machine):
  * reference: a single-thread loop doing what every simple loader does, decode the whole JPEG
    (tfds's decoder) + random-resized crop + resize + flip, stacked as uint8;
  * pipeline, in-thread: ``TfdsImageSource.train_batches(num_workers=0)`` (raw bytes, draft
    decode, crop+resize in one PIL pass, written straight into the uint8 batch);
  * pipeline, grain with 1, 2, ... workers (up to the cores), and with RandAugment rand-m15-n2-mstd0.
Throughput counts batches after each contender's warm-up (worker start-up excluded); "ms/image"
is wall time per image (1000 / images/s), which for a single thread is the per-image work.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import sys
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pgf.data import augment  # pylint: disable=g-import-not-at-top,wrong-import-position
from pgf.data.base import EpochSampler, example_rng  # pylint: disable=wrong-import-position

NAME = "imagenet2012"
SIZE = 224


# --- dataset -------------------------------------------------------------------------------------


def photo(rng: np.random.Generator, height: int = 375, width: int = 500) -> np.ndarray:
  """A photo-like uint8 image: JPEG size and decode cost close to a real 500x375 photograph."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32) / max(height, width)
  freq = rng.uniform(1, 8, (3, 2))
  phase = rng.uniform(0, 2 * np.pi, (3, 2))
  base = np.stack([110 + 70 * np.sin(freq[c, 0] * 2 * x + phase[c, 0]) *
                   np.cos(freq[c, 1] * 2 * y + phase[c, 1]) for c in range(3)], -1)
  image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(8, 20))):
    x0, y0 = rng.uniform(-50, width), rng.uniform(-50, height)
    w, h = rng.uniform(20, width / 2), rng.uniform(20, height / 2)
    color = tuple(int(c) for c in rng.integers(0, 256, 3))
    shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
    shape((x0, y0, x0 + w, y0 + h), fill=color)
  image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 2.0))))
  array = np.asarray(image).astype(np.float32)
  texture = rng.normal(0, 1, (-(-height // 2), -(-width // 2), 1)).repeat(2, 0).repeat(2, 1)
  array += texture[:height, :width] * 30  # Fine texture.
  array += rng.normal(0, 6, array.shape)  # Sensor noise.
  return np.clip(array, 0, 255).astype(np.uint8)


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, "JPEG", quality=quality)
  return buf.getvalue()


def make_dataset(data_dir: str, num_train: int, seed: int = 0) -> float:
  """Writes imagenet2012 (train: num_train, validation: max(8, num_train // 8)) as ArrayRecord.

  Returns the mean JPEG size in KB.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(NAME, data_dir=data_dir, file_format="array_record")
  shutil.rmtree(builder.data_dir, ignore_errors=True)
  os.makedirs(builder.data_dir)
  features = builder.info.features
  rng = np.random.default_rng(seed)
  splits, sizes = [], []
  for split, count in (("train", num_train), ("validation", max(8, num_train // 8))):
    template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=NAME,
                                             split=split, filetype_suffix="array_record")
    writer = ArrayRecordWriter(os.fspath(template.sharded_filepath(shard_index=0, num_shards=1)),
                               "group_size:1")
    total = 0
    for i in range(count):
      data = jpeg_bytes(photo(rng))
      sizes.append(len(data))
      record = features.serialize_example({"image": data, "label": int(rng.integers(1000)),
                                           "file_name": f"{split}_{i:06d}.JPEG"})
      writer.write(record)
      total += len(record)
    writer.close()
    splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[count], num_bytes=total,
                                      filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.write_to_directory(builder.data_dir)
  return float(np.mean(sizes)) / 1024


# --- contenders ----------------------------------------------------------------------------------


def reference_batches(data_dir: str, batch: int, seed: int, start: int, steps: int):
  """Single thread: tfds full decode + random-resized crop + resize + flip, uint8 stack."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = tfds.data_source(NAME, split="train", data_dir=data_dir, download=False)
  sampler = EpochSampler(seed, len(source), batch)
  for step in range(start, start + steps):
    images = []
    for position, index in enumerate(sampler.global_indices(step)):
      rng = example_rng(seed, step, position)
      image = source[int(index)]["image"]
      box = augment.random_resized_crop_box(rng, image.shape[0], image.shape[1])
      images.append(augment.random_flip_left_right(rng, augment.crop_and_resize(image, box, SIZE)))
    yield {"image": np.stack(images)}


def _cpu_seconds() -> float:
  """User + system CPU time of this process and its live children (the grain workers)."""
  import psutil  # pylint: disable=g-import-not-at-top
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.Error:  # Exited in between.
      pass
  return total


def timed(make_iterator, batch: int, warmup: int, steps: int, check=None) -> tuple[float, float]:
  """(images/s, CPU ms per image) over `steps` batches after `warmup` batches (worker start-up,
  first decodes) are drawn. CPU time counts every process of the pipeline, so it measures the work
  per image even when other jobs share the cores.

  ``check(step)``, if given, is the expected batch at each step (a correctness smoke test)."""
  iterator = make_iterator(warmup + steps)
  for _ in range(warmup):
    next(iterator)
  start, cpu_start = time.perf_counter(), _cpu_seconds()
  for step in range(warmup, warmup + steps):
    got = next(iterator)
    if check is not None:
      want = check(step)
      assert all(np.array_equal(got[k], want[k]) for k in want), f"step {step}: != train_batch"
    del got
  wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
  close = getattr(iterator, "close", None)
  if close:
    close()
  return steps * batch / wall, 1000 * cpu / (steps * batch)


def measure(batch_size: int, image_size: int, workers: int, seconds: float = 0.0,
            smoke: bool = False) -> dict:
  """Host images/s of the training pipeline with `workers` grain processes, on a fresh
  synthetic ImageNet-like set in a temporary directory (what bench_accelerator.py compares with
  the step's images/s). `seconds` is a hint: more batches are timed when it is larger."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from pgf.data.images import TfdsImageSource  # pylint: disable=g-import-not-at-top
  steps = 2 if smoke else max(8, int(seconds) // 2)
  with tempfile.TemporaryDirectory() as data_dir:
    make_dataset(data_dir, 12 if smoke else min(max(2 * batch_size, 256), 2048))
    source = TfdsImageSource(NAME, "train", data_dir, batch_size, 0, image_size, True,
                             num_workers=workers, prefetch=2,
                             randaugment=None if smoke else "rand-m15-n2-p1-mstd0")
    rate, cpu_ms = timed(lambda n: source.train_batches(0, n), batch_size, max(workers, 1),
                         steps)
  return {"images_per_s": rate, "cpu_ms_per_image": cpu_ms, "workers": workers,
          "randaugment": not smoke, "timed_batches": steps}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--make", type=int, default=0, help="write N training JPEGs first")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=32, help="timed batches per contender")
  parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; best kept")
  parser.add_argument("--workers", default="", help="comma list; default 1..cores")
  parser.add_argument("--smoke", action="store_true", help="tiny dataset, one worker, seconds")
  args = parser.parse_args(argv)
  if args.smoke:
    args.make, args.batch, args.steps, args.rounds = args.make or 12, 4, 2, 1
    args.workers = args.workers or "1"

  from pgf.data.images import TfdsImageSource, default_num_workers  # pylint: disable=g-import-not-at-top

  if args.make:
    t = time.perf_counter()
    kb = make_dataset(args.data_dir, args.make)
    print(f"wrote {args.make} train JPEGs (500x375, q90, mean {kb:.0f} KB) to {args.data_dir} "
          f"in {time.perf_counter() - t:.0f} s")
  cores = default_num_workers()
  workers = ([int(w) for w in args.workers.split(",")] if args.workers
             else list(range(1, cores + 1)))
  batch, steps, seed = args.batch, args.steps, 0

  def source(**kwargs):
    return TfdsImageSource(NAME, "train", args.data_dir, batch, seed, SIZE, True, **kwargs)

  probe = source(num_workers=0)
  raw = isinstance(probe._source[0]["image"], bytes)  # pylint: disable=protected-access
  print(f"{NAME} train: {probe.num_train} examples; raw JPEG bytes: {raw}; cores usable: {cores}; "
        f"batch {batch}, {steps} timed batches per contender, 224 px")
  # Smoke: also check the contract on real ArrayRecord records (iterator == train_batch).
  check = probe.train_batch if args.smoke else None

  contenders = [
      ("reference: 1 thread, full decode + crop/resize/flip", 1,
       lambda n: reference_batches(args.data_dir, batch, seed, 0, n), None),
      ("pipeline, in-thread (workers=0)", 1,
       lambda n: source(num_workers=0).train_batches(0, n), check)]
  for w in workers:
    contenders.append((f"pipeline, grain, {w} worker{'s' if w > 1 else ''}", w,
                       lambda n, w=w: source(num_workers=w, prefetch=2).train_batches(0, n),
                       check))
  if not args.smoke:  # One more worker start-up: skipped when smoke-testing.
    w = workers[-1]
    contenders.append(("pipeline + RandAugment m15-n2, in-thread", 1,
                       lambda n: source(num_workers=0, randaugment="rand-m15-n2-mstd0")
                       .train_batches(0, n), None))
    contenders.append((f"pipeline + RandAugment m15-n2, grain, {w} worker{'s' if w > 1 else ''}",
                       w, lambda n: source(num_workers=w, prefetch=2,
                                           randaugment="rand-m15-n2-mstd0").train_batches(0, n),
                       None))
  results = {name: [] for name, *_ in contenders}
  for _ in range(args.rounds):  # Interleaved, so slow phases of the machine hit every contender.
    for name, warmup, make, expect in contenders:
      results[name].append(timed(make, batch, warmup, steps, expect))
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

  best = {name: (max(r[0] for r in runs), min(r[1] for r in runs)) for name, runs in results.items()}
  reference = best[contenders[0][0]][0]
  print(f"\nbest of {args.rounds} interleaved rounds; 1-min load average at the end: {load:.1f}")
  print("| contender | images/s | wall ms/image | CPU ms/image | vs reference |\n"
        "|---|---:|---:|---:|---:|")
  for name, (rate, cpu_ms) in best.items():
    print(f"| {name} | {rate:.0f} | {1000 / rate:.2f} | {cpu_ms:.2f} | {rate / reference:.2f}x |")
  boxes = [augment.random_resized_crop_box(np.random.default_rng(i), 375, 500) for i in range(2000)]
  drafted = np.mean([min(b[2] - b[0], b[3] - b[1]) >= 2 * SIZE for b in boxes])
  print(f"\nrandom-resized crops of a 500x375 image that allow a 1/2-scale draft decode at {SIZE} px: "
        f"{100 * drafted:.1f}%")


if __name__ == "__main__":
  main()
