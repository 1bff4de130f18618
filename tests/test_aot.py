"""Compile-only TPU checks (libtpu's compiler on this CPU, no TPU): the Pallas N:M kernel's Mosaic
lowering, mixup without interconnect traffic, and `python -m pgf.aot` (also for a GPU box,
with the CUDA plugin's compile-only devices).

Skipped where libtpu is not installed (`pip install -e ".[tpu]"`); the GPU test where the CUDA
plugin is not (`pip install -e ".[gpu-aot]"`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pgf.aot import topology
from pgf.aot.hlo import collectives

pytestmark = pytest.mark.skipif(not topology.libtpu_available(),
                                reason="libtpu not installed (pip install -e '.[tpu]')")


def _one_chip(name):
  device = topology.resolve(name).devices()[0]
  return NamedSharding(Mesh(np.array([device]), ("d",)), P())


def _kernel_args(rows, k, r, n, m, s):
  from pgf.deploy import format as fmt
  g, r8 = k // m, -(-r // 8)
  return (jax.ShapeDtypeStruct((rows, k), jnp.bfloat16, sharding=s),
          jax.ShapeDtypeStruct((g, n, r), jnp.bfloat16, sharding=s),
          jax.ShapeDtypeStruct((g, n, fmt.index_bits(m), r8), jnp.uint8, sharding=s))


@pytest.mark.parametrize("chip,rows,m", [("v4-8", 1, 16), ("v5e-4", 8, 4), ("v6e-4", 64, 32)])
def test_pallas_nm_kernel_compiles_for_tpu(chip, rows, m):
  from pgf.deploy import format as fmt
  from pgf.deploy import nm_dot
  s = _one_chip(chip)
  k_dim, r = 512, 1024

  def compressed(x, values, packed):
    return nm_dot(x, fmt.NMKernel(values, packed, 1, m, (0,), (k_dim, r)), impl="pallas",
                  backend="tpu")

  compiled = jax.jit(compressed).lower(*_kernel_args(rows, k_dim, r, 1, m, s)).compile()
  assert "tpu_custom_call" in compiled.as_text()  # the Mosaic kernel, not a jnp fallback
  dense = jax.jit(jnp.dot).lower(jax.ShapeDtypeStruct((rows, k_dim), jnp.bfloat16, sharding=s),
                                 jax.ShapeDtypeStruct((k_dim, r), jnp.bfloat16, sharding=s)
                                 ).compile()
  # The point of the kernel: it reads the kept values and packed indices, not the dense W.
  assert compiled.cost_analysis()["bytes accessed"] < dense.cost_analysis()["bytes accessed"]


def test_gpu_tiles_do_not_lower_for_tpu():
  """What `pallas.supported` guards against: the Triton tiling (32-column blocks) is refused
  by Mosaic, which the TPU tiling avoids."""
  from pgf.deploy import pallas
  s = _one_chip("v4-8")
  m, r = 16, 3072
  fn = lambda x, v, p: pallas.nm_matmul(x, v, p, m=m, r=r, block_c=32, backend="tpu")
  with pytest.raises(Exception, match="divisible by 8 and 128"):
    jax.jit(fn).lower(*_kernel_args(1, 768, r, 1, m, s)).compile()


def test_mixup_partners_stay_on_their_device():
  from pgf.data import mixup
  devices = topology.resolve("v4-8").devices()
  mesh = Mesh(np.array(devices), ("data",))
  s = NamedSharding(mesh, P("data"))
  spec = mixup.MixSpec(mixup_alpha=0.5, cutmix_alpha=1.0)
  args = (jax.random.key(0), jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.float32, sharding=s),
          jax.ShapeDtypeStruct((16, 10), jnp.float32, sharding=s))

  def hlo(shards):
    fn = lambda key, x, t: mixup.mix_batch(key, x, t, spec, shards=shards)[:2]
    return jax.jit(fn, out_shardings=(s, s)).lower(*args).compile().as_text()

  image_bytes = 4 * 32 * 32 * 3 * 4  # the 4 images each device holds
  whole = collectives(hlo(1))  # the batch reversed across devices: every image moves
  assert any(c["op"] == "collective-permute" and c["bytes"] == image_bytes for c in whole), whole
  assert collectives(hlo(len(devices))) == []


# ----------------------------------------------------------------------------- python -m pgf.aot
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=" + os.path.join(ROOT, "configs", "vit_1_16.py") + ":demo",
        "--config.model.variant=Ti/8", "--config.model.width=32", "--config.model.depth=1",
        "--config.model.num_heads=2", "--config.model.mlp_dim=64"]


def _aot(*args, timeout=300, env=None):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, **(env or {})}
  env = {k: v for k, v in env.items() if v is not None}  # None: unset it
  proc = subprocess.run([sys.executable, "-m", "pgf.aot", *args], capture_output=True,
                        text=True, timeout=timeout, env=env, cwd=ROOT)
  return proc.returncode, proc.stdout, proc.stderr


def test_tiny_config_fits_a_4_chip_slice(tmp_path):
  out = tmp_path / "aot.json"
  rc, stdout, stderr = _aot(*TINY, "--topology=v4-8", f"--json={out}")
  assert rc == 0, stdout + stderr
  assert "FITS" in stdout and "4 v4 chips" in stdout
  record = json.loads(out.read_text())
  assert record["fits"] and record["chips"] == 4 and record["mesh"]["data"] == 4
  for step in record["steps"]:
    assert step["ok"] and step["flops"] > 0 and step["bytes_accessed"] > 0
    assert 0 < step["peak_bytes"] < record["usable_gib"] * 2**30
  train = record["steps"][0]
  assert train["name"] == "train" and train["memory"]["aliased"] > 0  # the donated state
  assert "all-reduce" in train["collectives"]  # data-parallel gradients
  assert "collective-permute" not in train["collectives"]  # mixup stays on each device


def _one_config_per_data_setup():
  """configs/*.py, one per (model, dataset, tokenizer) they use: the shipped configs of a
  family differ in their sparsity rules only, which compiling does not depend on."""
  import glob
  from pgf.train import config_lib
  picked = {}
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    config = config_lib.load(path)
    key = (config.model.name, config.data.name, config.data.get("tokenizer"))
    picked.setdefault(key, os.path.basename(path))
  return sorted(picked.values())


@pytest.mark.parametrize("name", _one_config_per_data_setup())
def test_every_config_builds_without_its_data(name):
  """`pgf.aot` must work for every shipped config on a machine without its dataset or its
  SentencePiece model (WMT and the LM name none until the user builds one): the trainer's
  preflight, for a v5e-8's 8 devices, runs on shape-only stand-ins, each named in a note, and
  the config is left as it was."""
  from pgf.aot import standins
  from pgf.train import config_lib
  from pgf.train import loop as train
  config = config_lib.load(os.path.join(ROOT, "configs", name))
  before = config.to_json_best_effort()
  notes = []
  with standins.data_free(config, notes):
    task, recipe, total_steps = train.preflight(config, 0, 1, device_count=8)
  assert total_steps > 0 and task.example_batch
  assert recipe.rules or recipe.method == "dense"  # the pre-training configs are dense
  assert config.to_json_best_effort() == before
  if config.data.get("tokenizer") == "":
    assert any("config.data.tokenizer is empty" in n for n in notes), notes


def test_config_that_cannot_fit_gets_the_message():
  # A 1-block ViT whose 2 x 64 x 2^24 MLP kernels (12 GiB of params + Adam state per chip,
  # replicated) cannot train on a v5e chip (16 GiB).
  rc, stdout, stderr = _aot(*TINY, "--config.model.mlp_dim=16777216", "--topology=v5e-4",
                            "--steps=train", "--nosuggest")
  assert rc == 1, stdout + stderr
  assert "DOES NOT FIT: the train step needs" in stdout
  assert "RESOURCE_EXHAUSTED" in stdout  # XLA's own words next to pgf's


def test_bad_topology_and_missing_flags_are_named(monkeypatch):
  rc, _, stderr = _aot(*TINY, "--topology=v9-8")
  assert rc == 2 and "--topology=v9-8: not a Cloud TPU slice name" in stderr
  rc, _, stderr = _aot("--topology=v4-8")
  assert rc == 2 and "--config=configs/X.py and --topology=SLICE are required" in stderr
  with pytest.raises(ValueError, match="v4/v5p slices are 4, 8, 16"):
    topology.resolve("v4-6")
  assert topology.resolve("v5litepod-16").hosts == 4
  assert topology.resolve("v4-32").hosts == 4 and topology.resolve("v4-32").chips == 16
  assert topology.resolve("2xv5e-16").chips == 32
  h100 = topology.resolve("h100-16")
  assert (h100.chips, h100.hosts, h100.topology_name) == (16, 2, "1x2x8")
  assert topology.resolve("a100-4").hosts == 1
  for bad, words in (("h100-6", "1, 2, 4 or 8 on one host"),
                     ("h100-0", "1, 2, 4 or 8 on one host"), ("b900-8", "not a known GPU box"),
                     ("2xh100-8", "several slices are a TPU notion")):
    with pytest.raises(ValueError, match=words):
      topology.resolve(bad)
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "75%")
  with pytest.raises(ValueError, match="XLA_PYTHON_CLIENT_MEM_FRACTION='75%': a fraction"):
    topology.usable_bytes(h100.chip)


# The CUDA plugin, installed apart so that other jax processes do not load it (.ci/run:
# pip install --target .gpu-aot -r requirements-gpu-aot.txt), or in this environment.
GPU_AOT = os.environ.get("PGF_GPU_AOT_PATH", os.path.join(ROOT, ".gpu-aot"))


@pytest.mark.skipif(not (topology.cuda_plugin_available() or
                         os.path.isdir(os.path.join(GPU_AOT, "jax_plugins", "xla_cuda12"))),
                    reason="CUDA plugin not installed (pip install -e '.[gpu-aot]', or "
                           "pip install --target .gpu-aot -r requirements-gpu-aot.txt)")
def test_tiny_config_compiles_for_a_gpu_box(tmp_path):
  """An 8-GPU H100 box, compile-only: the memory comes from XLA's GPU compiler (it has no cost
  model), and the pool JAX would pre-allocate decides the fit: shrunk to 1e-6 of 80 GiB
  (86 KB), the tiny ViT's step no longer fits and the exit status says so."""
  out = tmp_path / "aot.json"
  # JAX_PLATFORMS unset, as a user runs it: pgf.aot itself keeps jax off the (absent) GPU.
  env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.000001", "JAX_PLATFORMS": None,
         "PYTHONPATH": ROOT + os.pathsep + GPU_AOT}
  rc, stdout, stderr = _aot(*TINY, "--topology=h100-8", "--steps=train", "--nosuggest",
                            f"--json={out}", env=env)
  assert rc == 1, stdout + stderr
  assert "8 H100 GPUs" in stdout and "the GPU compiler gives no cost analysis" in stdout
  assert "DOES NOT FIT: the train step needs" in stdout
  record = json.loads(out.read_text())
  assert record["chips"] == 8 and record["mesh"]["data"] == 8 and not record["fits"]
  train = record["steps"][0]
  assert train["ok"] and train["flops"] is None
  assert train["peak_bytes"] > record["usable_gib"] * 2**30 > 0
  assert train["memory"]["temp"] > 0 and train["memory"]["aliased"] > 0  # the donated state
  assert "all-reduce" in train["collectives"]  # data-parallel gradients over the 8 GPUs


def test_suggestion_search_takes_the_first_variant_that_fits():
  """The search order and message, with the compiler replaced by a memory model (the real
  search is exercised in docs/aot.md's runs)."""
  from pgf.aot import search
  from pgf.aot import compile as aot_compile
  topo = topology.resolve("v4-8")
  usable = topology.usable_bytes(topo.chip)

  def fake_compile(config, topo, steps=("train",)):
    # Temporaries of 70 GiB over the micro-batch count; "block" remat divides them by 3.
    k = train.micro_batches_of(config, type("Mesh", (), {"shape": {"data": 4, "fsdp": 1}})())
    temp = 70 * 2**30 / k / (3 if config.model.get("remat", "none") == "block" else 1)
    step = aot_compile.StepResult("train", True, 1.0, dict(arguments=2**30, outputs=0,
                                                          aliased=0, temp=int(temp), code=0))
    return aot_compile.ConfigResult(topo, [step], [], config.batch_size, k, "none",
                                    {"data": 4, "fsdp": 1, "model": 1}, 2**30)

  from test_train_vit import load_config
  from pgf.train import loop as train
  config = load_config(os.path.join(ROOT, "configs", "vit_1_16.py"))  # batch 4096
  with config.unlocked():
    config.device_micro_batch = 0  # the count given directly (config.micro_batches)
  failed = aot_compile.ConfigResult(
      topo, [aot_compile.StepResult("train", False, 1.0, oom={"required": 70 * 2**30,
                                                               "available": 30.75 * 2**30})],
      [], 4096, 1, "none", {"data": 4, "fsdp": 1, "model": 1}, 2**30)
  found, tried = search.suggest(config, topo, failed, fake_compile, usable, max_tries=6)
  # 2 micro-batches: 35 + 1 GiB > 30.4 usable; 4 fits and ends the search.
  assert [c for c, _, _ in tried] == [{"micro_batches": 2}, {"micro_batches": 4}]
  assert found[0] == {"micro_batches": 4}
  # A config sized per device (as shipped: at most 128 per chip) is changed in that field, since
  # micro_batches next to it is refused: 1024 per chip, 2 then 4 micro-batches.
  with config.unlocked():
    config.device_micro_batch = 1024
  found, tried = search.suggest(config, topo, failed, fake_compile, usable, max_tries=6)
  assert [c for c, _, _ in tried] == [{"device_micro_batch": 512}, {"device_micro_batch": 256}]
  with config.unlocked():
    config.device_micro_batch = 0
  # 10x over: micro-batch counts that cannot be enough (2, 4) are not compiled.
  failed.steps[0].oom["required"] = 300 * 2**30
  assert search.variants(config, failed, usable)[0] == {"micro_batches": 8}
