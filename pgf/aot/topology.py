"""Compile-only accelerator topologies: Cloud TPU slice names -> devices this process can compile
for without owning them (libtpu's compile-only client), plus each chip's datasheet numbers.

    topo = resolve("v4-8")          # 4 chips (8 TensorCores, megacore), 1 host
    devices = topo.devices()        # jax Devices with platform "tpu": build a Mesh on them

Names as Cloud TPU spells them: v4-N and v5p-N count TensorCores (N / 2 chips, 4 chips per
host); v5e-N (alias v5litepod-N) and v6e-N count chips (one host up to 8 chips, 4 chips per host
above). A raw "v4:2x2x1"-style topology is accepted too. Several slices: "2xv5e-16".
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

__all__ = ["Chip", "Topology", "CHIPS", "resolve", "libtpu_available", "INSTALL_HINT",
           "TOPOLOGY_EXAMPLES"]

INSTALL_HINT = ('the TPU compiler (libtpu) is not installed: pip install -e ".[tpu]" (or pip install '
                '"jax[tpu]==<your jax version>"); it compiles for TPU on any Linux x86-64 CPU host')
TOPOLOGY_EXAMPLES = "v4-8, v4-32, v5e-8 (v5litepod-8), v5e-16, v5p-8, v6e-8, 2xv5e-16, v4:2x2x1"


@dataclasses.dataclass(frozen=True)
class Chip:
  """Datasheet numbers of one chip (one JAX device). Peaks are per chip, bf16, dense."""
  name: str
  hbm_gib: float          # HBM capacity per chip
  peak_tflops: float      # bf16 matmul peak
  hbm_gbps: float         # HBM bandwidth, GB/s
  megacore: bool          # two TensorCores driven as one device
  cores_in_name: bool     # v4-8 counts cores (4 chips); v5e-8 counts chips
  single_host_max: int    # largest slice (chips) served by one host


CHIPS = {
    # Cloud TPU system-architecture pages (per chip).
    "v4": Chip("v4", 32.0, 275.0, 1228.0, True, True, 4),
    "v5p": Chip("v5p", 95.0, 459.0, 2765.0, True, True, 4),
    "v5e": Chip("v5e", 16.0, 197.0, 819.0, False, False, 8),
    "v6e": Chip("v6e", 32.0, 918.0, 1640.0, False, False, 8),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e"}
_TOPO_PREFIX = {"v4": "v4", "v5p": "v5p", "v5e": "v5e", "v6e": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str                       # as the user spelled it
  chip: Chip
  shape: tuple[int, ...]          # chips per dimension (2-D for v5e/v6e, 3-D for v4/v5p)
  chips_per_host: tuple[int, ...]
  num_slices: int = 1

  @property
  def chips(self) -> int:
    return math.prod(self.shape) * self.num_slices

  @property
  def hosts(self) -> int:
    return self.chips // math.prod(self.chips_per_host)

  @property
  def topology_name(self) -> str:
    return f"{_TOPO_PREFIX[self.chip.name]}:{'x'.join(map(str, self.shape))}"

  def describe(self) -> str:
    slices = f"{self.num_slices} slices x " if self.num_slices > 1 else ""
    return (f"{self.name}: {slices}{self.topology_name}, {self.chips} {self.chip.name} chips "
            f"({self.chip.hbm_gib:g} GiB HBM each), {self.hosts} host(s)")

  def devices(self):
    """Compile-only jax Devices of this topology (needs libtpu)."""
    if not libtpu_available():
      raise RuntimeError(f"pgf.aot: {INSTALL_HINT}")
    # Compile-only: no TPU is opened, so several compiling processes may share the host, and
    # libtpu need not probe the (absent) TPU VM metadata.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v4-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    kwargs = dict(chips_per_host_bounds=tuple(self.chips_per_host) + (1,) * (3 - len(
        self.chips_per_host)))
    if self.chip.megacore:
      kwargs["chip_config_name"] = "megacore"
    if self.num_slices > 1:
      kwargs["num_slices"] = self.num_slices
    return list(topologies.get_topology_desc(topology_name=self.topology_name, platform="tpu",
                                             **kwargs).devices)


def libtpu_available() -> bool:
  try:
    import libtpu  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _shape_3d(chips: int) -> tuple[int, int, int]:
  """v4/v5p slice shapes: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ... (doubling in turn)."""
  if chips < 4 or chips & (chips - 1):
    raise ValueError(f"{chips} chips: v4/v5p slices are 4, 8, 16, ... chips (a power of two >= 4)")
  dims = [2, 2, 1]
  i = -1  # z first (2x2x1 -> 2x2x2), then z, y, x in turn
  while math.prod(dims) < chips:
    dims[2 - (i % 3) if i >= 0 else 2] *= 2
    i += 1
  return tuple(dims)


def _shape_2d(chips: int) -> tuple[int, int]:
  if chips < 1 or chips & (chips - 1):
    raise ValueError(f"{chips} chips: v5e/v6e slices are 1, 4, 8, 16, ..., 256 chips")
  a = 1 << ((chips.bit_length() - 1) // 2)
  return (a, chips // a)


def resolve(name: str) -> Topology:
  """A Cloud TPU slice name (module docstring) -> Topology; a ValueError lists valid names."""
  raw = name.strip()
  slices = 1
  m = re.fullmatch(r"(\d+)x(.+)", raw)
  if m and not re.fullmatch(r"[\dx]+", raw):
    slices, raw = int(m.group(1)), m.group(2)
  m = re.fullmatch(r"(v\d+[a-z]*)(?:-(\d+)|:(\d+(?:x\d+)+))", raw.lower())
  family = _ALIASES.get(m.group(1), m.group(1)) if m else None
  if not m or family not in CHIPS:
    if raw.lower().startswith(("h100", "a100", "gpu")):
      raise ValueError(f"--topology={name}: GPU boxes are not supported by pgf.aot yet (only "
                       f"Cloud TPU slices); valid names look like {TOPOLOGY_EXAMPLES}")
    raise ValueError(f"--topology={name}: not a Cloud TPU slice name; expected e.g. "
                     f"{TOPOLOGY_EXAMPLES} (chips: {', '.join(CHIPS)})")
  chip = CHIPS[family]
  if m.group(3):
    shape = tuple(int(x) for x in m.group(3).split("x"))
    chips = math.prod(shape)
  else:
    n = int(m.group(2))
    if chip.cores_in_name and n % 2:
      raise ValueError(f"--topology={name}: {family}-N counts TensorCores (2 per chip), N must "
                       "be even (v4-8 is 4 chips)")
    chips = n // 2 if chip.cores_in_name else n
    shape = _shape_3d(chips) if chip.megacore else _shape_2d(chips)
  if chip.megacore and len(shape) != 3 or not chip.megacore and len(shape) != 2:
    raise ValueError(f"--topology={name}: {family} slices are {3 if chip.megacore else 2}-D")
  if chips <= chip.single_host_max:
    per_host = shape
  else:
    per_host = (2, 2, 1) if len(shape) == 3 else (2, 2)
  return Topology(name, chip, shape, per_host, slices)
