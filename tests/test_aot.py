"""Compile-only TPU checks (libtpu's compiler on this CPU, no TPU): the Pallas N:M kernel's Mosaic
lowering, mixup without interconnect traffic, and `python -m pgf.aot`.

Skipped where libtpu is not installed (`pip install -e ".[tpu]"`).
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
