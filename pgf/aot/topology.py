"""Compile-only accelerator topologies: Cloud TPU slice names and GPU boxes -> devices this
process can compile for without owning them, plus each chip's datasheet numbers.

    topo = resolve("v4-8")          # 4 chips (8 TensorCores, megacore), 1 host
    devices = topo.devices()        # jax Devices with platform "tpu": build a Mesh on them
    resolve("h100-8").devices()     # 8 compile-only H100s of one host (platform "gpu")

TPU names as Cloud TPU spells them: v4-N and v5p-N count TensorCores (N / 2 chips, 4 chips per
host); v5e-N (alias v5litepod-N) and v6e-N count chips (one host up to 8 chips, 4 chips per host
above). A raw "v4:2x2x1"-style topology is accepted too. Several slices: "2xv5e-16". TPU
devices come from libtpu's compile-only client.

GPU boxes: h100-N, h200-N, a100-N count GPUs (1, 2, 4 or 8 on one host; above, 8 per host:
h100-16 is two hosts). Their devices come from the CUDA PJRT plugin's compile-only topology
(`jax-cuda12-plugin`, no GPU or CUDA install needed), given a description of the chip that
`gpu_target_config` writes from the datasheet numbers below.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

__all__ = ["Chip", "GpuSpec", "Topology", "CHIPS", "resolve", "libtpu_available",
           "cuda_plugin_available", "compiler_available", "install_hint", "usable_bytes",
           "gpu_target_config", "INSTALL_HINT", "GPU_INSTALL_HINT", "TOPOLOGY_EXAMPLES",
           "TPU_USABLE_FRACTION"]

INSTALL_HINT = ('the TPU compiler (libtpu) is not installed: pip install -e ".[tpu]" (or pip install '
                '"jax[tpu]==<your jax version>"); it compiles for TPU on any Linux x86-64 CPU host')
GPU_INSTALL_HINT = ('the GPU compiler (the CUDA PJRT plugin) is not installed: pip install -e '
                    '".[gpu-aot]" (or pip install "jax-cuda12-plugin==<your jax version>"); it '
                    'compiles for GPUs on any Linux x86-64 CPU host, no GPU or CUDA needed')
TOPOLOGY_EXAMPLES = ("v4-8, v4-32, v5e-8 (v5litepod-8), v5e-16, v5p-8, v6e-8, 2xv5e-16, v4:2x2x1; "
                     "GPU boxes h100-8, h200-8, a100-8, h100-16 (2 hosts)")
# XLA keeps part of a TPU's HBM for itself (v4: 30.75 of 32 GiB usable); a step that needs
# more than this fraction of the datasheet HBM is reported as not fitting.
TPU_USABLE_FRACTION = 0.95
# JAX's GPU client pre-allocates this fraction of each GPU's memory as its pool (what a step
# can use) unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise.
GPU_DEFAULT_MEM_FRACTION = 0.75
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class GpuSpec:
  """What XLA's GPU compiler needs to know about a chip it cannot query (NVIDIA datasheets)."""
  compute_capability: tuple[int, int]
  sm_count: int
  fp32_per_sm: int
  clock_ghz: float                  # boost clock
  l2_bytes: int
  shared_per_sm: int                # shared memory per SM, bytes
  shared_per_block_optin: int       # largest opt-in shared memory per block, bytes


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
  platform: str = "tpu"   # "tpu" | "gpu"
  gpu: GpuSpec | None = None
  label: str = ""         # how a GPU calls itself (device_kind)


CHIPS = {
    # Cloud TPU system-architecture pages (per chip).
    "v4": Chip("v4", 32.0, 275.0, 1228.0, True, True, 4),
    "v5p": Chip("v5p", 95.0, 459.0, 2765.0, True, True, 4),
    "v5e": Chip("v5e", 16.0, 197.0, 819.0, False, False, 8),
    "v6e": Chip("v6e", 32.0, 918.0, 1640.0, False, False, 8),
    # NVIDIA datasheets (SXM parts; bf16 dense tensor-core peaks, without sparsity).
    "h100": Chip("h100", 80.0, 989.0, 3350.0, False, False, 8, "gpu",
                 GpuSpec((9, 0), 132, 128, 1.98, 50 * 2**20, 228 * 2**10, 227 * 2**10),
                 "NVIDIA H100 80GB HBM3"),
    "h200": Chip("h200", 141e9 / GIB, 989.0, 4800.0, False, False, 8, "gpu",
                 GpuSpec((9, 0), 132, 128, 1.98, 50 * 2**20, 228 * 2**10, 227 * 2**10),
                 "NVIDIA H200"),
    "a100": Chip("a100", 80.0, 312.0, 2039.0, False, False, 8, "gpu",
                 GpuSpec((8, 0), 108, 64, 1.41, 40 * 2**20, 164 * 2**10, 163 * 2**10),
                 "NVIDIA A100-SXM4-80GB"),
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
    if self.chip.platform == "gpu":  # the CUDA plugin's "slices x hosts x devices per host"
      return f"1x{self.hosts}x{self.chips_per_host[0]}"
    return f"{_TOPO_PREFIX[self.chip.name]}:{'x'.join(map(str, self.shape))}"

  def describe(self) -> str:
    if self.chip.platform == "gpu":
      return (f"{self.name}: {self.chips} {self.chip.name.upper()} GPUs ({self.chip.hbm_gib:.4g} "
              f"GiB each), {self.hosts} host(s) of {self.chips_per_host[0]}")
    slices = f"{self.num_slices} slices x " if self.num_slices > 1 else ""
    return (f"{self.name}: {slices}{self.topology_name}, {self.chips} {self.chip.name} chips "
            f"({self.chip.hbm_gib:g} GiB HBM each), {self.hosts} host(s)")

  def devices(self):
    """Compile-only jax Devices of this topology (needs libtpu, or the CUDA plugin for GPUs)."""
    if self.chip.platform == "gpu":
      return self._gpu_devices()
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

  def _gpu_devices(self):
    if not cuda_plugin_available():
      raise RuntimeError(f"pgf.aot: {GPU_INSTALL_HINT}")
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    # With JAX_PLATFORMS=cpu (pgf.aot's default) the plugin registers without looking for a
    # GPU or the CUDA libraries; the target config stands in for the chip it cannot query.
    try:
      topo = topologies.get_topology_desc(self.chip.name, "cuda", topology=self.topology_name,
                                          target_config=gpu_target_config(self.chip))
    except Exception as e:  # pylint: disable=broad-except
      raise RuntimeError(
          f"pgf.aot: no compile-only GPUs ({type(e).__name__}: {str(e)[:200]}). Without a GPU "
          "the CUDA plugin registers only when jax's platforms are set to cpu before any jax "
          "backend starts (JAX_PLATFORMS=cpu, as `python -m pgf.aot` does)") from e
    return list(topo.devices)


def gpu_target_config(chip: Chip) -> str:
  """XLA's GpuTargetConfigProto for `chip`, in text format, from the datasheet numbers."""
  g = chip.gpu
  if g is None:
    raise ValueError(f"{chip.name} is not a GPU")
  memory = int(chip.hbm_gib * GIB)
  major, minor = g.compute_capability
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {g.shared_per_sm}
  shared_memory_per_block_optin: {g.shared_per_block_optin}
  threads_per_core_limit: 2048
  core_count: {g.sm_count}
  fpus_per_core: {g.fp32_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(chip.hbm_gbps * 1e9)}
  l2_cache_size: {g.l2_bytes}
  clock_rate_ghz: {g.clock_ghz}
  device_memory_size: {memory}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
device_description_str: "{chip.label}"
"""


def usable_bytes(chip: Chip) -> float:
  """Bytes per device a compiled step may hold: 95% of a TPU's HBM (XLA keeps the rest); on a
  GPU, the pool JAX pre-allocates (XLA_PYTHON_CLIENT_MEM_FRACTION, default 75%)."""
  if chip.platform == "gpu":
    value = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", str(GPU_DEFAULT_MEM_FRACTION))
    try:
      fraction = float(value)
    except ValueError:
      fraction = -1.0
    if not 0 < fraction <= 1:
      raise ValueError(f"XLA_PYTHON_CLIENT_MEM_FRACTION={value!r}: a fraction of the GPU's "
                       "memory in (0, 1] (JAX's default is 0.75)")
    return chip.hbm_gib * GIB * fraction
  return chip.hbm_gib * GIB * TPU_USABLE_FRACTION


def cuda_plugin_available() -> bool:
  try:
    import jax_plugins.xla_cuda12  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def compiler_available(chip: Chip) -> bool:
  return cuda_plugin_available() if chip.platform == "gpu" else libtpu_available()


def install_hint(chip: Chip) -> str:
  return GPU_INSTALL_HINT if chip.platform == "gpu" else INSTALL_HINT


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
  gpu = re.fullmatch(r"([a-z]\d+)-(\d+)", raw.lower())
  if gpu and gpu.group(1) in CHIPS and CHIPS[gpu.group(1)].platform == "gpu":
    return _gpu_box(name, CHIPS[gpu.group(1)], int(gpu.group(2)), slices)
  m = re.fullmatch(r"(v\d+[a-z]*)(?:-(\d+)|:(\d+(?:x\d+)+))", raw.lower())
  family = _ALIASES.get(m.group(1), m.group(1)) if m else None
  if not m or family not in CHIPS or CHIPS[family].platform != "tpu":
    if gpu and not raw.lower().startswith("v") or raw.lower().startswith("gpu"):
      gpus = ", ".join(k for k, c in CHIPS.items() if c.platform == "gpu")
      raise ValueError(f"--topology={name}: not a known GPU box; GPUs: {gpus}, as e.g. h100-8 "
                       "(8 GPUs, one host) or h100-16 (two hosts of 8)")
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


def _gpu_box(name: str, chip: Chip, gpus: int, slices: int) -> Topology:
  if slices != 1:
    raise ValueError(f"--topology={name}: several slices are a TPU notion; for more GPU hosts "
                     f"name the GPU count ({chip.name}-16 is two hosts of 8)")
  per_host = min(gpus, chip.single_host_max)
  if gpus < 1 or gpus not in (1, 2, 4) and gpus % chip.single_host_max:
    raise ValueError(f"--topology={name}: {chip.name}-N counts GPUs: 1, 2, 4 or 8 on one host, "
                     f"or a multiple of {chip.single_host_max} ({chip.single_host_max} per host)")
  return Topology(name, chip, (gpus,), (per_host,))
