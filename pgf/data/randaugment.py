"""RandAugment (Cubuk et al., 2019, "RandAugment: Practical automated data augmentation with a
reduced search space"), on PIL images, with randomness from an explicit ``np.random.Generator``.

The paper's idea: instead of searching a policy, apply ``N`` operations drawn uniformly (with
replacement) from a fixed list of 14 image operations, all at one shared magnitude ``M``. This
module follows the variant the ViT/Swin recipes train with (timm's ``rand-m{M}-n{N}-mstd{S}``
spec strings): each drawn operation is applied with probability ``p`` (0.5), the magnitude may be
jittered per operation by a Gaussian with std ``S`` (``mstd``; ``inf`` means uniform in ``[0, M]``),
and ``SolarizeAdd`` joins the list (15 operations).

Magnitude scale. ``M`` is on the paper's 0..10 scale, ``f = M / 10`` the fraction of each op's
maximum. After jitter the magnitude is clipped to ``[0, mmax]`` (``mmax`` 10 unless the spec says
otherwise, e.g. ``-mmax20``), so ``m15`` with the default ``mmax`` acts as ``m10``: the strongest
setting of every operation. We clip rather than extrapolate because several operations have no
meaning past their maximum (Posterize below 4 bits destroys the image; Solarize's threshold cannot
go below 0). Raise ``mmax`` to extrapolate the linear ops (rotate, shear, translate, enhance).

Operation (argument at fraction ``f``; ``±`` means a random sign with probability 1/2):

  =============  ===========================================================  ==================
  op             argument                                                      identity at f=0
  =============  ===========================================================  ==================
  AutoContrast   stretch each channel to 0..255                                no (no magnitude)
  Equalize       histogram equalisation per channel                            no (no magnitude)
  Invert         255 - x                                                       no (no magnitude)
  Rotate         ±30 f degrees about the centre                                yes
  Posterize      keep 8 - round(4 f) bits (8 -> 4)                             yes
  Solarize       invert pixels >= 256 - 256 f                                  yes
  SolarizeAdd    add 110 f to pixels < 128 (clipped at 255)                    yes
  Color          saturation factor 1 ± 0.9 f                                   yes
  Contrast       contrast factor 1 ± 0.9 f                                     yes
  Brightness     brightness factor 1 ± 0.9 f                                   yes
  Sharpness      sharpness factor 1 ± 0.9 f                                    yes
  ShearX/Y       shear ±0.3 f                                                  yes
  TranslateX/Y   shift ±0.45 f of the width/height                             yes
  =============  ===========================================================  ==================

These maxima are the paper's ranges (rotate 30°, shear 0.3, enhance factors in [0.1, 1.9],
posterize 4..8 bits, solarize 0..256, translate 150 px of a 331 px image ≈ 0.45). Geometric ops
fill exposed pixels with grey ``(128, 128, 128)`` and resample bilinearly.

Randomness: per image, for each of the ``N`` slots, in order: the op index, the apply coin, the
sign coin, and the magnitude noise are drawn from the generator whether or not they are used, so
the stream (and hence the image) depends only on the generator's seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0
FILL = (128, 128, 128)


def _affine(image: Image.Image, matrix) -> Image.Image:
  return image.transform(image.size, Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR,
                         fillcolor=FILL if image.mode == "RGB" else 128)


def _enhance(enhancer) -> Callable[[Image.Image, float, float], Image.Image]:
  return lambda image, f, sign: enhancer(image).enhance(1.0 + sign * 0.9 * f)


def _solarize_add(image: Image.Image, f: float, sign: float) -> Image.Image:
  del sign
  add = int(round(110 * f))
  lut = [min(255, i + add) if i < 128 else i for i in range(256)] * len(image.getbands())
  return image.point(lut)


# name -> fn(image, f, sign) with f = magnitude fraction in [0, mmax / 10], sign in {-1, +1}.
OPS: dict[str, Callable[[Image.Image, float, float], Image.Image]] = {
    "AutoContrast": lambda image, f, sign: ImageOps.autocontrast(image),
    "Equalize": lambda image, f, sign: ImageOps.equalize(image),
    "Invert": lambda image, f, sign: ImageOps.invert(image),
    "Rotate": lambda image, f, sign: image.rotate(
        sign * 30.0 * f, resample=Image.Resampling.BILINEAR,
        fillcolor=FILL if image.mode == "RGB" else 128),
    "Posterize": lambda image, f, sign: ImageOps.posterize(
        image, int(np.clip(8 - round(4 * f), 1, 8))),
    "Solarize": lambda image, f, sign: ImageOps.solarize(image, max(0, 256 - int(round(256 * f)))),
    "SolarizeAdd": _solarize_add,
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": lambda image, f, sign: _affine(image, (1, sign * 0.3 * f, 0, 0, 1, 0)),
    "ShearY": lambda image, f, sign: _affine(image, (1, 0, 0, sign * 0.3 * f, 1, 0)),
    "TranslateX": lambda image, f, sign: _affine(
        image, (1, 0, sign * 0.45 * f * image.size[0], 0, 1, 0)),
    "TranslateY": lambda image, f, sign: _affine(
        image, (1, 0, 0, 0, 1, sign * 0.45 * f * image.size[1])),
}
OP_NAMES = tuple(OPS)


@dataclasses.dataclass(frozen=True)
class RandAugment:
  """``num_ops`` random operations per image at ``magnitude`` (0..10 scale), see module docstring.

  Build one from a spec string with ``RandAugment.parse("rand-m15-n2-mstd0")``.
  """

  magnitude: float = 9.0
  num_ops: int = 2
  magnitude_std: float = 0.0
  magnitude_max: float = MAX_LEVEL
  prob: float = 0.5

  def __post_init__(self):
    if self.num_ops < 0 or self.magnitude < 0 or self.magnitude_std < 0 or self.magnitude_max < 0:
      raise ValueError(f"RandAugment arguments must be non-negative: {self}.")
    if not 0.0 <= self.prob <= 1.0:
      raise ValueError(f"RandAugment prob must lie in [0, 1], got {self.prob}.")

  @classmethod
  def parse(cls, spec: str) -> "RandAugment":
    """Parses a timm-style spec: ``rand`` then ``-``-separated ``m<M>``, ``n<N>``, ``mstd<S>``,
    ``mmax<X>``, ``p<P>`` in any order, e.g. ``rand-m15-n2-mstd0`` or ``rand-m9-n2-mstd0.5``."""
    parts = spec.strip().split("-")
    if parts[0] != "rand":
      raise ValueError(f"RandAugment spec {spec!r} must start with 'rand', got {parts[0]!r}.")
    keys = {"m": "magnitude", "n": "num_ops", "mstd": "magnitude_std", "mmax": "magnitude_max",
            "p": "prob"}
    kwargs = {}
    for part in parts[1:]:
      key = next((k for k in sorted(keys, key=len, reverse=True) if part.startswith(k)), None)
      if key is None:
        raise ValueError(f"RandAugment spec {spec!r}: unknown part {part!r}; expected one of "
                         f"{', '.join(k + '<number>' for k in keys)}.")
      value = part[len(key):]
      try:
        number = float(value)
      except ValueError:
        raise ValueError(f"RandAugment spec {spec!r}: part {part!r} needs a number after "
                         f"{key!r}, got {value!r}.") from None
      if key == "n":
        if number != int(number):
          raise ValueError(f"RandAugment spec {spec!r}: part {part!r} needs an integer.")
        number = int(number)
      if keys[key] in kwargs:
        raise ValueError(f"RandAugment spec {spec!r}: part {part!r} repeats {key!r}.")
      kwargs[keys[key]] = number
    try:
      return cls(**kwargs)
    except ValueError as e:
      raise ValueError(f"RandAugment spec {spec!r}: {e}") from None

  def sample_magnitude(self, noise: float) -> float:
    """Magnitude for one op given a standard-normal (or uniform, for mstd=inf) draw ``noise``."""
    if math.isinf(self.magnitude_std):
      magnitude = noise * self.magnitude  # noise ~ U[0, 1) in this mode.
    else:
      magnitude = self.magnitude + self.magnitude_std * noise
    return float(np.clip(magnitude, 0.0, self.magnitude_max))

  def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
    for _ in range(self.num_ops):
      op = OP_NAMES[int(rng.integers(len(OP_NAMES)))]
      apply, sign = rng.random() < self.prob, (1.0 if rng.random() < 0.5 else -1.0)
      noise = rng.random() if math.isinf(self.magnitude_std) else rng.standard_normal()
      if apply:
        image = OPS[op](image, self.sample_magnitude(noise) / MAX_LEVEL, sign)
    return image


def parse(spec: str | RandAugment | None) -> RandAugment | None:
  """None/'' -> None; a spec string -> RandAugment; a RandAugment passes through."""
  if spec is None or isinstance(spec, RandAugment):
    return spec
  if not spec.strip() or spec.strip().lower() == "none":
    return None
  return RandAugment.parse(spec)
