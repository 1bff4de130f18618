"""A Pallas kernel for x @ W with W in the packed N:M form, aimed at small batches (1-64 rows).

At small batch a dense matmul is memory-bound: it streams every weight once. This kernel streams
only the kept values and the packed indices (at 1:16 bf16 with 4-bit indices, 0.078 of the dense
bytes) and rebuilds each dense tile on chip (compare the unpacked indices with an iota, select
the values) before a dense dot with the activations: the FLOPs are dense, the bytes are not.

Grid: one program per block of C packed columns (8 * C output columns, see the layout in
`pgf.deploy.format`); each loops over the K // M groups in blocks of `block_g`. Written for the
Triton (GPU) lowering; the same body uses only iota/compare/select/dot, which Mosaic (TPU) also
lowers, but neither has been run on a device in this repository: the tests run it in interpret
mode on CPU (`interpret=True`), which checks the indexing and arithmetic, not the speed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pgf.deploy.format import unpack_strips

__all__ = ["nm_matmul", "supported"]

MIN_ROWS = 16  # Triton's dot needs every operand dimension >= 16: small batches are padded


def _pow2(x: int) -> bool:
  return x > 0 and x & (x - 1) == 0


def _largest_pow2_divisor(x: int, cap: int) -> int:
  d = 1
  while d * 2 <= cap and x % (d * 2) == 0:
    d *= 2
  return d


def supported(rows: int, n: int, m: int, groups: int, chunks: int) -> bool:
  """Shapes the GPU lowering accepts: power-of-two M and tile sizes (Triton block shapes)."""
  del n  # the kept slots are looped over statically
  return rows <= 1024 and _pow2(m) and _largest_pow2_divisor(chunks, 32) >= 8 and groups >= 1


def _kernel(x_ref, v_ref, p_ref, o_ref, *, m: int, n: int, block_g: int, num_blocks: int):
  rows, c = o_ref.shape[0], o_ref.shape[2]
  iota_m = jax.lax.broadcasted_iota(jnp.int32, (1, m, 1, 1), 1)

  def body(b, acc):
    g0 = pl.multiple_of(b * block_g, block_g)
    xs = x_ref[:, pl.ds(g0 * m, block_g * m)].astype(jnp.float32)  # (rows, block_g * m)
    v = v_ref[pl.ds(g0, block_g)].astype(jnp.float32)              # (block_g, n, 8, c)
    idx = unpack_strips(p_ref[pl.ds(g0, block_g)], m)              # (block_g, n, 8, c)
    w = jnp.zeros((block_g, m, 8, c), jnp.float32)
    for j in range(n):  # the dense tile: each kept value lands on its in-group row
      w = w + jnp.where(idx[:, j:j + 1] == iota_m, v[:, j:j + 1], 0.0)
    return acc + jnp.dot(xs, w.reshape(block_g * m, 8 * c),
                         preferred_element_type=jnp.float32)

  acc = jax.lax.fori_loop(0, num_blocks, body, jnp.zeros((rows, 8 * c), jnp.float32))
  o_ref[...] = acc.reshape(rows, 8, c).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("m", "r", "block_c", "block_g", "interpret"))
def nm_matmul(x, values, packed, *, m: int, r: int, block_c: int | None = None,
              block_g: int | None = None, interpret: bool = False):
  """x (rows, K) @ the packed kernel -> (rows, r) in x's dtype (float32 accumulation).

  Args:
    x: activations, K = (K // M) * M.
    values: (G, N, R) kept values. packed: (G, N, B, R8) uint8 indices.
    m: group size. r: output columns R.
    block_c, block_g: tile sizes (packed columns per program, groups per loop step).
    interpret: run the kernel body in the Pallas interpreter (CPU tests).
  """
  rows, k = x.shape
  g, n, r_values = values.shape
  r8 = packed.shape[-1]
  block_c = block_c or _largest_pow2_divisor(r8, 32)
  block_g = block_g or _largest_pow2_divisor(g, 16)
  if r8 % block_c or g % block_g:
    raise ValueError(f"block_c={block_c} must divide {r8} and block_g={block_g} divide {g}")
  padded_rows = max(MIN_ROWS, 1 << (rows - 1).bit_length())  # Triton blocks: powers of two
  x = jnp.pad(x, ((0, padded_rows - rows), (0, 0)))
  # Values in the packed column order: column t * R8 + c -> [.., t, c] (a free reshape).
  values = jnp.pad(values, ((0, 0), (0, 0), (0, 8 * r8 - r_values))).reshape(g, n, 8, r8)
  kernel = functools.partial(_kernel, m=m, n=n, block_g=block_g, num_blocks=g // block_g)
  out = pl.pallas_call(
      kernel,
      grid=(r8 // block_c,),
      in_specs=[pl.BlockSpec((padded_rows, k), lambda i: (0, 0)),
                pl.BlockSpec((g, n, 8, block_c), lambda i: (0, 0, 0, i)),
                pl.BlockSpec((g, n, packed.shape[2], block_c), lambda i: (0, 0, 0, i))],
      out_specs=pl.BlockSpec((padded_rows, 8, block_c), lambda i: (0, 0, i)),
      out_shape=jax.ShapeDtypeStruct((padded_rows, 8, r8), x.dtype),
      interpret=interpret,
  )(x, values, packed)
  return out.reshape(padded_rows, 8 * r8)[:rows, :r]
