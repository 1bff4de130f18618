"""`nm_dot(x, kernel)`: activations contracted with a compressed N:M kernel, and the Flax
interceptor that makes unchanged Dense/DenseGeneral layers use it.

Implementations (`impl`):
  "pallas"  the Pallas kernel (pgf/deploy/pallas.py): streams only kept values + packed indices.
  "gather"  jnp: gathers, for every kept weight, the activation at its in-group position and
            multiplies (reads only the kept values; materialises rows x K/M x N x R products,
            so it is meant for small row counts).
  "expand"  jnp: rebuilds W ⊙ Φ from the compressed form in the graph, then a dense matmul
            (reads the compressed bytes; the FLOPs and a transient dense W are dense).
  "auto"    (default) picks by target backend, from the compiler's byte counts
            (experiments/aot_nm_dot.py, results in experiments/results/aot/):
              TPU: "pallas" where the Mosaic tiling exists (`pallas.supported`), else "expand";
                   never "gather" (its gathers read 50-300x the dense bytes on v4/v5e/v6e).
              GPU: "pallas" for <= SMALL_ROWS rows and shapes the Triton tiling supports.
              CPU and others: "gather" for <= SMALL_ROWS rows (the README's CPU timings).
            Everything else, and more rows (compute-bound): "expand".
Override per call (`impl=`), for a block of code (`with use_impl("expand"): ...`) or for the
interceptor (`intercept(impl=...)`). The target backend is `jax.default_backend()` unless named
(`backend=`, or `with use_backend("tpu"):` when compiling for compile-only TPU devices).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from pgf.deploy.format import NMKernel, unpack_indices

__all__ = ["nm_dot", "use_impl", "use_backend", "intercept", "IMPLS", "SMALL_ROWS",
           "resolve_impl"]

IMPLS = ("auto", "pallas", "gather", "expand")
SMALL_ROWS = 64
_IMPL = contextvars.ContextVar("pgf_deploy_impl", default="auto")
_BACKEND = contextvars.ContextVar("pgf_deploy_backend", default=None)


@contextlib.contextmanager
def use_backend(backend: str | None):
  """Within the block, nm_dot picks implementations and Pallas tiles for `backend` ("tpu",
  "gpu", "cpu"; None: `jax.default_backend()`), e.g. while compiling for compile-only TPU
  devices from a CPU host."""
  if backend is not None and backend not in ("tpu", "gpu", "cuda", "rocm", "cpu"):
    raise ValueError(f"backend={backend!r}: expected tpu, gpu, cuda, rocm or cpu")
  token = _BACKEND.set(backend)
  try:
    yield
  finally:
    _BACKEND.reset(token)


def _target(backend: str | None) -> str:
  backend = backend or _BACKEND.get() or jax.default_backend()
  return "gpu" if backend in ("cuda", "rocm") else backend


@contextlib.contextmanager
def use_impl(impl: str):
  """Within the block, nm_dot calls without an explicit `impl` use this one."""
  _check_impl(impl)
  token = _IMPL.set(impl)
  try:
    yield
  finally:
    _IMPL.reset(token)


def _check_impl(impl):
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r}: expected one of {IMPLS}")


def resolve_impl(impl: str | None, rows: int, kernel: NMKernel, backend: str | None = None) -> str:
  """The implementation "auto" (or the context default) picks for `rows` rows on `backend`
  (None: the `use_backend` context's, else `jax.default_backend()`)."""
  impl = impl or _IMPL.get()
  _check_impl(impl)
  if impl != "auto":
    return impl
  backend = _target(backend)
  from pgf.deploy import pallas  # pylint: disable=g-import-not-at-top
  g, n, _ = kernel.values.shape
  chunks = kernel.packed.shape[-1]
  itemsize = jnp.dtype(kernel.values.dtype).itemsize
  if backend == "tpu":
    # Compiler bytes (v4/v5e/v6e, 768x3072 bf16, 1:4..1:32, 1-64 rows): pallas reads the
    # fewest, expand ~1x dense plus the rebuild, gather 50-300x dense: never gather here.
    if rows <= pallas.MAX_ROWS and pallas.supported(rows, n, kernel.m, g, chunks, "tpu",
                                                    itemsize):
      return "pallas"
    return "expand"
  if rows > SMALL_ROWS:
    return "expand"
  if backend == "gpu":
    return "pallas" if pallas.supported(rows, n, kernel.m, g, chunks, "gpu", itemsize) else "gather"
  return "gather"


def _flatten_x(x, kernel: NMKernel):
  """(rows, K) view of x and the batch shape; a ValueError names both shapes on a mismatch."""
  contracting = kernel.contracting_shape
  k = math.prod(contracting)
  if x.ndim >= len(contracting) and tuple(x.shape[x.ndim - len(contracting):]) == contracting:
    batch = x.shape[:x.ndim - len(contracting)]
  elif x.ndim >= 1 and x.shape[-1] == k:
    batch = x.shape[:-1]
  else:
    raise ValueError(f"nm_dot: x shape {tuple(x.shape)} does not fit kernel shape {kernel.shape} "
                     f"grouped along axis {kernel.axis}: x must end in {contracting} or in K={k}")
  return x.reshape((-1, k)), batch


def _gather(x2, values, indices, m: int):
  g = values.shape[0]
  positions = jnp.arange(g, dtype=jnp.int32)[:, None, None] * m + indices  # (G, N, R)
  picked = jnp.take(x2, positions, axis=1)  # (rows, G, N, R): only kept weights' partners
  return jnp.einsum("bgjr,gjr->br", picked, values, preferred_element_type=jnp.float32)


def _expand(x2, values, indices, m: int):
  g, _, r = values.shape
  onehot = indices[:, :, None, :] == jnp.arange(m, dtype=jnp.int32)[None, None, :, None]
  w = jnp.sum(jnp.where(onehot, values[:, :, None, :], 0), axis=1).reshape(g * m, r)
  return jnp.dot(x2, w.astype(values.dtype), preferred_element_type=jnp.float32)


def nm_dot(x, kernel: NMKernel, *, impl: str | None = None, interpret: bool | None = None,
           backend: str | None = None):
  """x contracted with `kernel` over its grouped axes (what `x @ W` is for a 2-D kernel).

  Args:
    x: (..., *kernel.contracting_shape) or (..., K) activations.
    kernel: an `NMKernel` (e.g. a leaf of `pgf.deploy.load(path)`).
    impl: "auto" | "pallas" | "gather" | "expand" (module docstring); None: the context's.
    interpret: for "pallas": run in the Pallas interpreter (default: when the target backend
      is not GPU/TPU).
    backend: the target backend ("tpu", "gpu", "cpu"): picks "auto"'s implementation and the
      Pallas tiles; None: the `use_backend` context's, else `jax.default_backend()`.

  Returns:
    (..., *kernel.out_shape) in the promoted dtype of x and the kernel values; products are
    accumulated in float32.
  """
  if not isinstance(kernel, NMKernel):
    raise TypeError(f"nm_dot: kernel must be a pgf.deploy.NMKernel, got {type(kernel).__name__}")
  x = jnp.asarray(x)
  x2, batch = _flatten_x(x, kernel)
  dtype = jnp.result_type(x.dtype, kernel.values.dtype)
  x2, values = x2.astype(dtype), jnp.asarray(kernel.values).astype(dtype)
  target = _target(backend)
  chosen = resolve_impl(impl, x2.shape[0], kernel, target)
  r = values.shape[-1]
  if chosen == "pallas":
    from pgf.deploy import pallas  # pylint: disable=g-import-not-at-top
    if interpret is None:
      interpret = target not in ("gpu", "tpu")
    out = pallas.nm_matmul(x2, values, jnp.asarray(kernel.packed), m=kernel.m, r=r,
                           interpret=interpret,
                           backend=target if target in ("gpu", "tpu") else None)
  else:
    indices = unpack_indices(jnp.asarray(kernel.packed), kernel.m, r)
    out = (_gather if chosen == "gather" else _expand)(x2, values, indices, kernel.m)
  return out.astype(dtype).reshape(batch + kernel.out_shape)


# ----------------------------------------------------------------------------- Flax
def _dense_general_call(module, inputs, kernel: NMKernel, impl):
  """What nn.Dense / nn.DenseGeneral.__call__ computes, with the kernel contracted by nm_dot."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  inputs = jnp.asarray(inputs)
  ndim = inputs.ndim
  if isinstance(module, nn.DenseGeneral):
    if module.batch_dims:
      raise NotImplementedError(f"{module.name}: DenseGeneral batch_dims with a compressed kernel")
    axes = (module.axis,) if isinstance(module.axis, int) else tuple(module.axis)
  else:
    axes = (-1,)
  # Flax sorts DenseGeneral's axes: the kernel's leading dims follow the inputs' axis order,
  # whatever order `axis` names them in.
  axes = tuple(sorted(a % ndim for a in axes))
  k = len(axes)
  if tuple(inputs.shape[a] for a in axes) != kernel.shape[:k]:
    raise ValueError(f"{module.name}: inputs shape {inputs.shape} (axes {axes}) do not fit the "
                     f"compressed kernel shape {kernel.shape}")
  # Contracting input axes last, in kernel-dimension order 0..k-1 ...
  x = jnp.moveaxis(inputs, axes, tuple(range(ndim - k, ndim)))
  bias = module.get_variable("params", "bias") if module.use_bias else None
  dtype = module.dtype or jnp.result_type(
      inputs.dtype, kernel.values.dtype, *(() if bias is None else (bias.dtype,)))
  x = x.astype(dtype)
  if sorted(kernel.axis) == list(range(k)):
    # ... then in the order the kernel's groups flatten them.
    x = jnp.moveaxis(x, [ndim - k + a for a in kernel.axis], tuple(range(ndim - k, ndim)))
    out = nm_dot(x, kernel, impl=impl)
  else:  # grouped along output dims: nothing to save in the contraction, expand it
    out = jnp.tensordot(x, kernel.dense().astype(dtype), k)
  out = out.astype(dtype)
  if bias is not None:
    out = out + jnp.asarray(bias, dtype)
  return out


def _conv_call(module, inputs, kernel: NMKernel):
  """An nn.Conv whose kernel is an `NMKernel`: the kernel is expanded to W ⊙ Φ in the graph and
  the layer runs unchanged (XLA's dense convolution; the compressed bytes are what is stored)."""
  params = {"kernel": kernel.dense()}
  if module.use_bias:
    params["bias"] = module.get_variable("params", "bias")
  return module.clone(parent=None).apply({"params": params}, inputs)


def _check_intact(module, kernel: NMKernel) -> None:
  """ValueError (with the fix) if the kernel's arrays no longer fit its shape, which is what a
  lifted transform that slices params (nn.scan / nn.vmap over stacked layers) does to it."""
  axes = kernel.axis
  k = math.prod(kernel.shape[a] for a in axes)
  r = math.prod(kernel.shape) // max(k, 1)
  if np.shape(kernel.values) != (k // kernel.m, kernel.n, r):
    raise ValueError(
        f"{module.name}: its compressed kernel {kernel.shape} holds values of shape "
        f"{tuple(np.shape(kernel.values))}, not ({k // kernel.m}, {kernel.n}, {r}): a lifted "
        "transform (nn.scan, nn.remat_scan, nn.vmap over stacked layers) sliced it along the "
        "layer axis, which a compressed kernel does not have. Run such a model from the dense "
        "form: params = pgf.deploy.densify(params) (or densify only the stacked kernels)")


def _interceptor(next_fun, args, kwargs, context, impl=None):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  module = context.module
  if (context.method_name == "__call__" and isinstance(module, nn.Conv)
      and module.has_variable("params", "kernel")
      and isinstance(module.get_variable("params", "kernel"), NMKernel)):
    _check_intact(module, module.get_variable("params", "kernel"))
    return _conv_call(module, args[0] if args else kwargs["inputs"],
                      module.get_variable("params", "kernel"))
  if context.method_name != "__call__" or not isinstance(module, (nn.Dense, nn.DenseGeneral)):
    return next_fun(*args, **kwargs)
  if not module.has_variable("params", "kernel"):
    return next_fun(*args, **kwargs)
  kernel = module.get_variable("params", "kernel")
  if not isinstance(kernel, NMKernel):
    return next_fun(*args, **kwargs)
  _check_intact(module, kernel)
  inputs = args[0] if args else kwargs["inputs"]
  return _dense_general_call(module, inputs, kernel, impl)


def intercept(impl: str | None = None):
  """Context manager: Flax Dense/DenseGeneral layers whose kernel is an `NMKernel` compute with
  `nm_dot` (other layers run unchanged)::

      params = pgf.deploy.load("model.safetensors")
      with pgf.deploy.intercept():
        logits = model.apply({"params": params}, images, train=False)

  Use it around tracing (inside or around `jax.jit`'s first call). An nn.Conv with a compressed
  kernel expands it to W ⊙ Φ in the graph and convolves densely (exact); a compressed kernel in
  any other kind of layer is not intercepted: `pgf.deploy.densify` that leaf first. Layers
  inside nn.scan / nn.remat_scan see their kernels sliced per layer, which a compressed kernel
  does not support: run scanned models from `pgf.deploy.densify(params)` (a clear error says
  so).
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  if impl is not None:
    _check_impl(impl)
  return nn.intercept_methods(functools.partial(_interceptor, impl=impl))
