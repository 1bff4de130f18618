"""NumPy/PIL image augmentation: one example at a time, randomness from an explicit Generator.

Every random function takes a ``np.random.Generator`` instead of using global state, so the caller
(see ``base.example_rng``) decides the seeding and batches stay pure functions of ``(seed, step)``.
Resizing goes through PIL because its bilinear filter antialiases when downsampling (a plain NumPy
gather would alias badly at 0.08 crop scales) and it can crop and resize in one resampling pass via
``box=``; PIL releases the GIL there, which is what makes a thread pool worthwhile.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# Per-channel statistics on the 0..255 scale.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CIFAR10_MEAN = (0.4914 * 255, 0.4822 * 255, 0.4465 * 255)
CIFAR10_STD = (0.2470 * 255, 0.2435 * 255, 0.2616 * 255)

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels, PIL convention.


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3),
                            attempts: int = 10) -> Box:
  """Inception-style crop: area fraction in ``scale``, log-uniform aspect ratio in ``ratio``.

  Falls back to the largest central crop with the ratio clipped to range, as the reference
  implementations do, when no sample fits inside the image.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(attempts):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return (left, top, left + w, top + h)
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  top, left = (height - h) // 2, (width - w) // 2
  return (left, top, left + w, top + h)


def center_crop_box(height: int, width: int, crop_fraction: float = 0.875) -> Box:
  """The square that "resize shorter side to size/crop_fraction, center crop size" keeps.

  Expressed in original pixel coordinates so the crop and resize happen in a single PIL
  resampling, which is both faster and slightly sharper than resizing twice.
  """
  side = crop_fraction * min(height, width)
  top, left = (height - side) / 2, (width - side) / 2
  return (left, top, left + side, top + side)


def crop_and_resize(image: np.ndarray, box: Box | None, size: int) -> np.ndarray:
  """Crops ``box`` out of a uint8 (H, W, C) image and resizes it to (size, size), bilinear."""
  height, width = image.shape[:2]
  if box is None:
    box = (0, 0, width, height)
  if (box == (0, 0, width, height)) and height == width == size:
    return image
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR, box=box))
  return out[..., None] if channels == 1 else out


def open_image(data) -> Image.Image:
  """A lazily decoded PIL image from encoded bytes (JPEG, PNG, ...) or a decoded uint8 array."""
  if isinstance(data, (bytes, bytearray, memoryview)):
    return Image.open(io.BytesIO(data))
  array = np.asarray(data)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  return Image.fromarray(array)


def draft_for_crop(image: Image.Image, box: Box, size: int) -> tuple[Image.Image, Box]:
  """Asks the JPEG decoder for the smallest DCT reduction (1/2, 1/4, 1/8) that keeps ``box`` at
  least ``size`` pixels on each side, and returns the image with ``box`` in the reduced
  coordinates. Must be called before the image is loaded; a no-op for other formats.

  Reduced-DCT decoding skips most of the inverse DCT and colour conversion work, and averaging in
  the DCT domain is itself a decent antialiasing filter, so the final bilinear resize from at least
  ``size`` pixels looks like the full decode (see tests). It only pays off when the crop is at least
  twice ``size``: large images, or small crops of them.
  """
  if image.format != "JPEG":
    return image, box
  width, height = image.size
  box_w, box_h = box[2] - box[0], box[3] - box[1]
  requested = (max(1, math.ceil(width * size / box_w)), max(1, math.ceil(height * size / box_h)))
  image.draft("RGB", requested)
  if image.size == (width, height):
    return image, box
  sx, sy = image.size[0] / width, image.size[1] / height
  return image, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def decode_crop_resize(data, box_fn, size: int, draft: bool = True) -> Image.Image:
  """Decodes ``data`` (bytes or array), crops ``box_fn(height, width)`` and resizes it to
  ``(size, size)`` bilinear, in one PIL resampling pass; RGB out.

  The box is computed from the header size before any pixel is decoded, so with ``draft`` the JPEG
  decoder can work at a reduced scale (``draft_for_crop``).
  """
  image = open_image(data)
  width, height = image.size
  box = box_fn(height, width)
  if draft:
    image, box = draft_for_crop(image, box, size)
  if image.mode not in ("RGB", "L"):
    image = image.convert("RGB")
  out = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
  return out if out.mode == "RGB" else out.convert("RGB")


def pad_and_random_crop(rng: np.random.Generator, image: np.ndarray, pad: int,
                        fill: float = 0) -> np.ndarray:
  """Random translation by up to ``pad`` pixels in each direction, exposing ``fill`` at the edges."""
  if pad <= 0:
    return image
  height, width = image.shape[:2]
  padded = np.full((height + 2 * pad, width + 2 * pad) + image.shape[2:], fill, image.dtype)
  padded[pad:pad + height, pad:pad + width] = image
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  return padded[top:top + height, left:left + width]


def random_flip_left_right(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
  return image[:, ::-1] if rng.random() < 0.5 else image


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """(x - mean) / std per channel, in float32."""
  mean = np.asarray(mean, np.float32)
  inv_std = 1.0 / np.asarray(std, np.float32)
  return (images.astype(np.float32) - mean) * inv_std


def _linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) matrix of bilinear weights with half-pixel centers (align_corners=False)."""
  centers = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  centers = np.clip(centers, 0, in_size - 1)
  low = np.floor(centers).astype(np.int64)
  high = np.minimum(low + 1, in_size - 1)
  frac = centers - low
  matrix = np.zeros((out_size, in_size), np.float64)
  np.add.at(matrix, (np.arange(out_size), low), 1 - frac)
  np.add.at(matrix, (np.arange(out_size), high), frac)
  return matrix


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of a float batch (N, H, W) or (N, H, W, C) to (size, size), pure NumPy.

  Used for upsampling tiny images (digits) where antialiasing does not matter; as two small matrix
  products it is exact, vectorised and float-preserving.
  """
  rows = _linear_resize_matrix(images.shape[1], size)
  cols = _linear_resize_matrix(images.shape[2], size)
  out = np.einsum("oh,nhw...->now...", rows, images.astype(np.float64))
  out = np.einsum("pw,now...->nop...", cols, out)
  return out.astype(np.float32)
