"""A Pallas kernel for x @ W with W in the packed N:M form, aimed at small batches (1-64 rows).

At small batch a dense matmul is memory-bound: it streams every weight once. This kernel streams
only the kept values and the packed indices (at 1:16 bf16 with 4-bit indices, 0.078 of the dense
bytes) and rebuilds each dense tile on chip (compare the unpacked indices with an iota, select
the values) before a dense dot with the activations: the FLOPs are dense, the bytes are not.

Grid: one program per block of C packed columns (8 * C output columns, see the layout in
`pgf.deploy.format`); each loops over the K // M groups in blocks of `block_g`. One body, two
lowerings, with tiles chosen per target backend (`tiles`):

  * GPU (Triton): power-of-two blocks, C <= 32 packed columns, rows padded to >= 16.
  * TPU (Mosaic): the last two dims of every block must be divisible by (8, 128) or span the
    whole array, so C = 128 packed columns (1024 output columns) or all of them, and
    block_g * M must be a multiple of 128 (the lane-dim slice of the activations must be
    provably aligned) or cover all of K; the blocks must also fit the scoped VMEM.

Neither lowering has run on a device in this repository. The tests check the numerics in
interpret mode on CPU (`interpret=True`) and compile the TPU lowering without a TPU (libtpu,
compile-only v4/v5e/v6e devices): Mosaic accepts the tiles, and the compiler's cost model counts
the bytes (`experiments/aot_nm_dot.py`); the speed is not measured.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pgf.deploy.format import index_bits, unpack_strips

__all__ = ["nm_matmul", "supported", "tiles", "BACKENDS"]

MIN_ROWS = 16  # Triton's dot needs every operand dimension >= 16; bf16 TPU tiles are (16, 128)
MAX_ROWS = 1024
BACKENDS = ("gpu", "tpu", "interpret")
TPU_LANES = 128
TPU_VMEM_BUDGET = 12 * 2**20  # double-buffered blocks + the f32 tile; v4/v5e/v6e scope >= 16 MiB


def _pow2(x: int) -> bool:
  return x > 0 and x & (x - 1) == 0


def _largest_pow2_divisor(x: int, cap: int) -> int:
  d = 1
  while d * 2 <= cap and x % (d * 2) == 0:
    d *= 2
  return d


def _backend(backend: str | None) -> str:
  """"gpu" / "tpu" / "interpret" for a JAX platform name (None: the default backend)."""
  backend = backend or jax.default_backend()
  if backend in ("gpu", "cuda", "rocm"):
    return "gpu"
  if backend == "tpu":
    return "tpu"
  if backend in ("cpu", "interpret"):
    return "interpret"
  raise ValueError(f"pallas backend={backend!r}: expected one of gpu, cuda, rocm, tpu, cpu, "
                   "interpret")


def _padded_rows(rows: int, backend: str) -> int:
  if backend == "tpu":  # sublane tiles: 8 (f32) / 16 (bf16) rows; no power of two needed
    return max(MIN_ROWS, -(-rows // MIN_ROWS) * MIN_ROWS)
  return max(MIN_ROWS, 1 << (rows - 1).bit_length())  # Triton blocks: powers of two


def tiles(rows: int, n: int, m: int, groups: int, chunks: int, backend: str | None = None,
          itemsize: int = 2):
  """(block_c, block_g, padded_rows) the kernel uses on `backend`, or None where it cannot.

  `chunks` is R8 = ceil(R / 8) (packed columns), `groups` G = K // M, `itemsize` the bytes per
  activation / value element (the VMEM estimate on TPU).
  """
  backend = _backend(backend)
  if rows < 1 or rows > MAX_ROWS or groups < 1 or chunks < 1 or n < 1 or m < 1:
    return None
  padded = _padded_rows(rows, backend)
  if backend == "tpu":
    block_c = TPU_LANES if chunks % TPU_LANES == 0 else chunks
    if block_c > 4 * TPU_LANES:  # a whole, unaligned column count: too wide a block
      return None
    block_g = _largest_pow2_divisor(groups, max(16, TPU_LANES // m))
    if (block_g * m) % TPU_LANES and block_g != groups:
      if groups * m > 8192:  # no aligned loop step; the whole K in one step would not fit
        return None
      block_g = groups
    k = groups * m
    bits = index_bits(m)
    vmem = 2 * (padded * k * itemsize                      # activations (whole K)
                + groups * n * 8 * block_c * itemsize      # kept values
                + groups * n * bits * block_c              # packed indices (uint8)
                + padded * 8 * block_c * itemsize)         # output block
    vmem += block_g * m * 8 * block_c * 4 + padded * 8 * block_c * 4  # f32 tile + accumulator
    if vmem > TPU_VMEM_BUDGET:
      return None
    return block_c, block_g, padded
  if backend == "gpu":
    if not _pow2(m):
      return None
    block_c = _largest_pow2_divisor(chunks, 32)
    if block_c < 8:
      return None
    return block_c, _largest_pow2_divisor(groups, 16), padded
  return _largest_pow2_divisor(chunks, 32), _largest_pow2_divisor(groups, 16), padded


def supported(rows: int, n: int, m: int, groups: int, chunks: int, backend: str | None = None,
              itemsize: int = 2) -> bool:
  """Whether the kernel lowers for this shape on `backend` (None: `jax.default_backend()`):
  the Triton constraints on GPU, Mosaic's block layout and VMEM on TPU, anything in the
  interpreter. See `tiles`."""
  return tiles(rows, n, m, groups, chunks, backend, itemsize) is not None


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


@functools.partial(jax.jit, static_argnames=("m", "r", "block_c", "block_g", "interpret",
                                             "backend"))
def nm_matmul(x, values, packed, *, m: int, r: int, block_c: int | None = None,
              block_g: int | None = None, interpret: bool = False, backend: str | None = None):
  """x (rows, K) @ the packed kernel -> (rows, r) in x's dtype (float32 accumulation).

  Args:
    x: activations, K = (K // M) * M.
    values: (G, N, R) kept values. packed: (G, N, B, R8) uint8 indices.
    m: group size. r: output columns R.
    block_c, block_g: tile sizes (packed columns per program, groups per loop step); default:
      `tiles(...)` for the backend.
    interpret: run the kernel body in the Pallas interpreter (CPU tests).
    backend: the backend whose lowering rules pick the tiles: "gpu", "tpu" or None (the default
      backend; "interpret" when `interpret`). Name it when compiling for a device this process
      does not have (e.g. a compile-only TPU topology from a CPU host).
  """
  rows, k = x.shape
  g, n, r_values = values.shape
  r8 = packed.shape[-1]
  target = "interpret" if interpret and backend is None else _backend(backend)
  chosen = tiles(rows, n, m, g, r8, target, jnp.dtype(x.dtype).itemsize)
  if chosen is None:
    raise ValueError(f"pallas.nm_matmul: no {target} tiling for rows={rows}, K={k}, R={r_values}, "
                     f"{n}:{m} (pallas.supported() is False): use impl='expand'")
  block_c = block_c or chosen[0]
  block_g = block_g or chosen[1]
  padded_rows = chosen[2]
  if r8 % block_c or g % block_g:
    raise ValueError(f"block_c={block_c} must divide {r8} and block_g={block_g} divide {g}")
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
