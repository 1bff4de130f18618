"""The deployable N:M format: kept values + in-group indices packed to ceil(log2 M) bits.

A kernel grouped by M along its `axis` (flattened in order, as in `pgf.nm_mask`) with N kept per
group is the `NMKernel` pytree leaf

    values  (G, N, R)         the kept weights, G = K // M groups, R = product of the other dims
                              (the layout of `pgf.analysis.export.compress`), bf16 or f32
    packed  (G, N, B, R8)     uint8, B = ceil(log2 M) bytes per 8 indices, R8 = ceil(R / 8)

Index packing. Column r of a row of R indices is written as r = t * R8 + c (t = 0..7, columns
padded with zeros up to 8 * R8): the eight indices of "chunk" c form the 8B-bit little-endian word
sum_t idx[t * R8 + c] << (t * B), stored as its B bytes packed[..., 0:B, c]. Every unpacking step
is then elementwise over c (static shifts of whole byte planes, no gathers), which is what keeps
the Pallas kernel and the jnp path simple, and a (.., 8, R8) result reshapes to (.., R) for free.

On disk (safetensors): "<name>/values" and "<name>/indices" per kernel, every other parameter
under its own name, and the metadata entry "pgf" holding a JSON header

    {"format": "pgf-nm-v2",
     "kernels": {name: {"n", "m", "axis", "shape", "bits"}},
     "tree":    the params' containers: {"dict": {key: node}}, {"list": [node, ...]},
                {"tuple": [...]}, {"leaf": name} (so lists, tuples and keys containing "/"
                come back exactly),
     "sha256":  {tensor name: hex digest of its dtype, shape and bytes}}

A name is the "/"-joined path with "%" and "/" inside a key escaped as %25 and %2F. `load`
and `python -m pgf.deploy --verify` check every digest, so a flipped byte in any tensor is an
error, not a silently different model. Files of the first version ("pgf-nm-v1": no tree, no
digests) still load, with their tree rebuilt from the names as before.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from pgf.analysis import export
from pgf.masks import is_nm, normalize_axes

__all__ = ["NMKernel", "index_bits", "pack_indices", "unpack_indices", "from_dense",
           "from_compressed", "to_compressed", "verify", "save", "load", "densify",
           "is_compressed", "FORMAT"]

FORMAT = "pgf-nm-v2"
READABLE_FORMATS = ("pgf-nm-v1", FORMAT)
META_KEY = "pgf"
MAX_M = 256  # ceil(log2 M) <= 8 bits: 8 indices pack into one 64-bit word


def index_bits(m: int) -> int:
  """ceil(log2 M) (at least 1, so that M = 1 still has a well-formed, if trivial, index)."""
  return max(1, math.ceil(math.log2(m))) if m > 1 else 1


def _chunks(r: int) -> int:
  return -(-r // 8)


def pack_indices(indices: np.ndarray, m: int) -> np.ndarray:
  """(..., R) ints in [0, m) -> (..., B, ceil(R / 8)) uint8 (module docstring layout)."""
  indices = np.asarray(indices)
  if not 1 <= m <= MAX_M:
    raise ValueError(f"pack_indices: m={m} outside [1, {MAX_M}] (8 indices must fit a 64-bit "
                     "word)")
  if indices.size and (indices.min() < 0 or indices.max() >= m):
    raise ValueError(f"pack_indices: indices must lie in [0, {m}), got "
                     f"[{indices.min()}, {indices.max()}]")
  bits, r = index_bits(m), indices.shape[-1]
  r8 = _chunks(r)
  padded = np.zeros(indices.shape[:-1] + (8 * r8,), np.uint64)
  padded[..., :r] = indices
  strips = padded.reshape(indices.shape[:-1] + (8, r8))  # [.., t, c] = column t * R8 + c
  words = np.zeros(indices.shape[:-1] + (r8,), np.uint64)
  for t in range(8):
    words |= strips[..., t, :] << np.uint64(t * bits)
  planes = [(words >> np.uint64(8 * k)) & np.uint64(0xFF) for k in range(bits)]
  return np.stack(planes, axis=-2).astype(np.uint8)


def unpack_strips(packed, m: int):
  """(..., B, R8) packed bytes -> (..., 8, R8) int32 indices, strip t holding columns t*R8 + c.

  Each strip reads the at most two byte planes its bits span; the shifts are static, so this is
  a handful of elementwise ops per byte, traceable in jnp and inside a Pallas kernel body.
  """
  bits = index_bits(m)
  if packed.shape[-2] != bits:
    raise ValueError(f"unpack_indices: packed shape {packed.shape} needs {bits} byte planes "
                     f"for m={m}")
  planes = [packed[..., k, :].astype(jnp.int32) for k in range(bits)]
  strips = []
  for t in range(8):
    start = t * bits
    first, last = start // 8, (start + bits - 1) // 8
    word = planes[first]
    if last > first:
      word = word | (planes[last] << 8)
    strips.append((word >> (start % 8)) & ((1 << bits) - 1))
  return jnp.stack(strips, axis=-2)


def unpack_indices(packed, m: int, r: int):
  """Inverse of `pack_indices` in jnp: (..., B, R8) uint8 -> (..., r) int32."""
  strips = unpack_strips(packed, m)
  return strips.reshape(strips.shape[:-2] + (-1,))[..., :r]


@jax.tree_util.register_pytree_node_class
class NMKernel:
  """A compressed N:M kernel: a pytree whose children are `values` and `packed` indices.

  It stands where the dense kernel stood in a params tree; `pgf.deploy.intercept()` makes Flax
  Dense/DenseGeneral layers contract with it via `nm_dot` (models do not change).
  """

  def __init__(self, values, packed, n: int, m: int, axis, shape):
    self.values, self.packed = values, packed
    self.n, self.m = int(n), int(m)
    self.axis, self.shape = tuple(int(a) for a in axis), tuple(int(s) for s in shape)

  def tree_flatten(self):
    return (self.values, self.packed), (self.n, self.m, self.axis, self.shape)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children, *aux)

  def __repr__(self):
    return (f"NMKernel({self.n}:{self.m}, shape={self.shape}, axis={self.axis}, "
            f"values={getattr(self.values, 'dtype', '?')}{tuple(np.shape(self.values))})")

  @property
  def dtype(self):
    return self.values.dtype

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def bits(self) -> int:
    return index_bits(self.m)

  @property
  def contracting_shape(self) -> tuple[int, ...]:
    return tuple(self.shape[a] for a in self.axis)

  @property
  def out_shape(self) -> tuple[int, ...]:
    return tuple(s for a, s in enumerate(self.shape) if a not in self.axis)

  @property
  def dense_bytes(self) -> int:
    return math.prod(self.shape) * np.dtype(self.values.dtype).itemsize

  @property
  def nbytes(self) -> int:
    return int(np.prod(np.shape(self.values))) * np.dtype(self.values.dtype).itemsize + int(
        np.prod(np.shape(self.packed)))

  def indices(self):
    """(G, N, R) int32 in-group positions (ascending within each group and column)."""
    return unpack_indices(jnp.asarray(self.packed), self.m, self.values.shape[-1])

  def dense(self):
    """The dense kernel W ⊙ Φ in jnp (zeros at pruned positions), in the kernel's shape."""
    g, n, r = self.values.shape
    onehot = self.indices()[:, :, None, :] == jnp.arange(self.m)[None, None, :, None]
    grouped = jnp.sum(jnp.where(onehot, jnp.asarray(self.values)[:, :, None, :], 0), axis=1)
    axes = self.axis + tuple(a for a in range(self.ndim) if a not in self.axis)
    permuted = grouped.astype(self.values.dtype).reshape(tuple(self.shape[a] for a in axes))
    return jnp.transpose(permuted, np.argsort(axes))


def is_compressed(x) -> bool:
  return isinstance(x, NMKernel)


def from_compressed(c: export.CompressedNM, dtype=None) -> NMKernel:
  """An `NMKernel` from the unpacked `pgf.analysis.export.CompressedNM` (values cast to dtype)."""
  values = np.asarray(c.values, dtype or c.values.dtype)
  return NMKernel(values, pack_indices(c.indices, c.m), c.n, c.m, c.axis, c.shape)


def to_compressed(k: NMKernel) -> export.CompressedNM:
  """The unpacked NumPy form (for `pgf.analysis.export.decompress` / `nm_matmul`)."""
  return export.CompressedNM(values=np.asarray(k.values),
                             indices=np.asarray(k.indices()).astype(export.index_dtype(k.m)),
                             n=k.n, m=k.m, axis=k.axis, shape=k.shape)


def from_dense(w, n: int, m: int, axis=0, mask=None, dtype=None) -> NMKernel:
  """Compresses a dense kernel (default mask: `pgf.nm_mask(w, n, m, axis)`, as finalize)."""
  return from_compressed(export.compress(w, n, m, axis, mask=mask), dtype)


# ----------------------------------------------------------------------------- verify
def verify(kernel, n: int | None = None, m: int | None = None, axis=None) -> None:
  """Raises ValueError unless `kernel` is exactly N:M along its axis.

  A dense kernel (array) needs n, m (axis default 0) and must have exactly n nonzeros in every
  group of m. An `NMKernel` must have consistent shapes and, in every group and column, n
  distinct in-group positions in [0, m), ascending; n/m/axis, if given, must match its own.
  """
  if isinstance(kernel, NMKernel):
    _verify_packed(kernel, n, m, axis)
    return
  if n is None or m is None:
    raise ValueError("verify: a dense kernel needs n and m")
  w = np.asarray(kernel)
  axis = 0 if axis is None else axis
  axes = normalize_axes(w.shape, axis)
  k = math.prod(w.shape[a] for a in axes)
  if k % m:
    raise ValueError(f"verify: grouped length {k} (shape {w.shape}, axis {axis!r}) is not "
                     f"divisible by m={m}")
  if not bool(is_nm(w != 0, n, m, axes)):
    raise ValueError(f"verify: kernel of shape {w.shape} is not exactly {n}:{m} along axis "
                     f"{axis!r} (some group has a different number of nonzeros)")


def _verify_packed(k: NMKernel, n, m, axis) -> None:
  expect = {"n": n, "m": m, "axis": None if axis is None else tuple(
      normalize_axes(k.shape, axis))}
  for name, want in expect.items():
    if want is not None and want != getattr(k, name):
      raise ValueError(f"verify: kernel has {name}={getattr(k, name)!r}, expected {want!r}")
  if not 1 <= k.n <= k.m:
    raise ValueError(f"verify: need 1 <= n <= m, got {k.n}:{k.m}")
  axes = normalize_axes(k.shape, k.axis)
  kk = math.prod(k.shape[a] for a in axes)
  r = math.prod(k.shape) // kk
  if kk % k.m or np.shape(k.values) != (kk // k.m, k.n, r):
    raise ValueError(f"verify: values shape {np.shape(k.values)} does not fit {k.n}:{k.m} of a "
                     f"kernel {k.shape} grouped along {k.axis} (want ({kk // k.m}, {k.n}, {r}))")
  want_packed = (kk // k.m, k.n, k.bits, _chunks(r))
  if np.shape(k.packed) != want_packed or np.dtype(k.packed.dtype) != np.uint8:
    raise ValueError(f"verify: packed indices {np.shape(k.packed)} {k.packed.dtype}, want "
                     f"{want_packed} uint8")
  idx = np.asarray(k.indices())
  if idx.size and (idx.max() >= k.m):
    raise ValueError(f"verify: in-group index {idx.max()} >= m={k.m}")
  if k.n > 1 and np.any(np.diff(idx, axis=1) <= 0):
    raise ValueError(f"verify: in-group positions must be distinct and ascending (a group keeps "
                     f"fewer than n={k.n} weights)")


# ----------------------------------------------------------------------------- files
def _escape(key) -> str:
  return str(key).replace("%", "%25").replace("/", "%2F")


def _tree_spec(params, leaves: dict[str, Any], prefix: tuple[str, ...] = ()):
  """The container structure of `params` as JSON, filling `leaves` {name: leaf}."""
  where = "/".join(prefix) or "(root)"
  if isinstance(params, Mapping) and not is_compressed(params):
    for key in params:
      if not isinstance(key, (str, int)) or isinstance(key, bool):
        raise TypeError(f"save: dict key {key!r} at {where} must be a str or an int")
    if len({type(k) for k in params}) > 1:
      raise TypeError(f"save: the dict at {where} mixes str and int keys")
    spec = {"dict": {str(k): _tree_spec(v, leaves, prefix + (_escape(k),))
                     for k, v in params.items()}}
    if params and all(isinstance(k, int) for k in params):
      spec["int_keys"] = True
    return spec
  if type(params) in (list, tuple):
    kind = type(params).__name__
    return {kind: [_tree_spec(v, leaves, prefix + (str(i),)) for i, v in enumerate(params)]}
  if not (is_compressed(params) or hasattr(params, "shape")
          or isinstance(params, (int, float, np.generic))) or not prefix:
    raise TypeError(f"save: the leaf at {where} is a {type(params).__name__}; a params tree is "
                    "dicts, lists and tuples of arrays and NMKernels")
  name = "/".join(prefix)
  if name in leaves:
    raise ValueError(f"save: two parameters get the name {name!r}")
  leaves[name] = params
  return {"leaf": name}


def _build(spec, flat: Mapping[str, Any], where: str = "tree"):
  if not isinstance(spec, dict) or len(set(spec) - {"int_keys"}) != 1:
    raise ValueError(f"corrupt pgf header: {where} must be one of {{'dict'|'list'|'tuple'|"
                     f"'leaf': ...}}, got {str(spec)[:80]}")
  if "leaf" in spec:
    if spec["leaf"] not in flat:
      raise ValueError(f"corrupt file: the header names tensor {spec['leaf']!r}, which the "
                       "file does not hold")
    return flat[spec["leaf"]]
  if "dict" in spec:
    int_keys = spec.get("int_keys", False)
    return {(int(k) if int_keys else k): _build(v, flat, f"{where}/{k}")
            for k, v in spec["dict"].items()}
  kind = "list" if "list" in spec else "tuple" if "tuple" in spec else None
  if kind is None or not isinstance(spec[kind], list):
    raise ValueError(f"corrupt pgf header: {where} has an unknown node {sorted(spec)}")
  items = [_build(v, flat, f"{where}/{i}") for i, v in enumerate(spec[kind])]
  return items if kind == "list" else tuple(items)


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
  """A pgf-nm-v1 file's tree: nested dicts from the "/"-joined names."""
  out: dict[str, Any] = {}
  for path, leaf in flat.items():
    node = out
    *parents, name = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[name] = leaf
  return out


def _digest(array: np.ndarray) -> str:
  h = hashlib.sha256()
  h.update(f"{array.dtype.str}{list(array.shape)}".encode())
  h.update(np.ascontiguousarray(array).tobytes())
  return h.hexdigest()


def save(path: str, params) -> dict[str, Any]:
  """Writes a params tree (NMKernel leaves and dense arrays, in dicts, lists and tuples) to a
  .safetensors file that `load` returns exactly: same containers, keys, shapes (scalars too)
  and dtypes, every tensor guarded by a sha256 digest in the header.

  Returns the JSON header written into the file's metadata.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  leaves: dict[str, Any] = {}
  tree = _tree_spec(params, leaves)
  tensors, kernels = {}, {}

  def put(name, array):
    if name in tensors:
      raise ValueError(f"save: parameter path {name!r} collides with a compressed kernel's entry")
    array = np.asarray(array)
    # np.ascontiguousarray would turn a 0-d scalar into shape (1,).
    tensors[name] = array if array.flags.c_contiguous else np.array(array, order="C")

  for name, leaf in leaves.items():
    if isinstance(leaf, NMKernel):
      verify(leaf)
      put(f"{name}/values", np.asarray(leaf.values))
      put(f"{name}/indices", np.asarray(leaf.packed))
      kernels[name] = {"n": leaf.n, "m": leaf.m, "axis": list(leaf.axis),
                       "shape": list(leaf.shape), "bits": leaf.bits}
    else:
      put(name, np.asarray(leaf))
  header = {"format": FORMAT, "kernels": kernels, "tree": tree,
            "sha256": {name: _digest(a) for name, a in tensors.items()}}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  save_file(tensors, path, metadata={META_KEY: json.dumps(header)})
  return header


def _open(path: str):
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise ValueError(f"{path!r}: no such file")
  try:
    return safe_open(path, framework="numpy")
  except Exception as e:  # SafetensorError, OSError: truncated, not safetensors, ...
    raise ValueError(f"{path!r} is not a readable .safetensors file ({type(e).__name__}: {e}); "
                     "pgf.deploy.load reads files written by pgf.deploy.save (python -m "
                     "pgf.deploy --workdir=RUN --out=FILE), copied completely") from None


_KERNEL_FIELDS = {"n": int, "m": int, "axis": list, "shape": list}


def read_header(path: str) -> dict[str, Any]:
  """The JSON header of a file written by `save` (validated; ValueError names the problem)."""
  with _open(path) as f:
    meta = f.metadata() or {}
  if META_KEY not in meta:
    raise ValueError(f"{path!r} has no {META_KEY!r} metadata: not written by pgf.deploy.save")
  try:
    header = json.loads(meta[META_KEY])
  except json.JSONDecodeError as e:
    raise ValueError(f"{path!r}: corrupt pgf header (not JSON: {e})") from None
  if not isinstance(header, dict):
    raise ValueError(f"{path!r}: corrupt pgf header (a {type(header).__name__}, not an object)")
  if header.get("format") not in READABLE_FORMATS:
    raise ValueError(f"{path!r}: format {header.get('format')!r}, this pgf reads "
                     f"{', '.join(READABLE_FORMATS)}")
  kernels = header.get("kernels")
  if not isinstance(kernels, dict):
    raise ValueError(f"{path!r}: corrupt pgf header ('kernels' must be an object)")
  for name, info in kernels.items():
    bad = [k for k, t in _KERNEL_FIELDS.items()
           if not isinstance(info, dict) or not isinstance(info.get(k), t)]
    if bad:
      raise ValueError(f"{path!r}: corrupt pgf header: kernel {name!r} needs {bad} "
                       f"({', '.join(f'{k}: {t.__name__}' for k, t in _KERNEL_FIELDS.items())})")
  if header["format"] != "pgf-nm-v1":
    if not isinstance(header.get("sha256"), dict) or "tree" not in header:
      raise ValueError(f"{path!r}: corrupt pgf header ({header['format']} needs 'tree' and "
                       "'sha256')")
  return header


def load(path: str, *, as_jax: bool = True, check: bool = True) -> dict[str, Any]:
  """The params tree of a file written by `save`: NMKernel leaves for the compressed kernels.

  Args:
    path: the .safetensors file.
    as_jax: put the arrays on the default device (else NumPy arrays).
    check: compare every tensor with its sha256 digest from the header and `verify` each
      compressed kernel (cheap next to reading them). A mismatch is a ValueError naming the
      tensor. Files of format pgf-nm-v1 carry no digests: only `verify` runs.
  """
  header = read_header(path)
  kernels, digests = header["kernels"], header.get("sha256")
  to = jnp.asarray if as_jax else (lambda a: a)
  arrays: dict[str, np.ndarray] = {}
  with _open(path) as f:
    names = set(f.keys())
    wanted = set(digests) if digests is not None else names
    missing = sorted(wanted - names) + sorted(
        f"{k}/{part}" for k in kernels for part in ("values", "indices")
        if f"{k}/{part}" not in names)
    if missing:
      raise ValueError(f"{path!r}: corrupt file: tensors {missing[:3]} listed in the header are "
                       "missing")
    extra = sorted(names - wanted)
    if extra:
      raise ValueError(f"{path!r}: corrupt file: tensors {extra[:3]} are not in the header")
    for name in sorted(names):
      try:
        arrays[name] = f.get_tensor(name)
      except Exception as e:  # a truncated data section
        raise ValueError(f"{path!r}: cannot read tensor {name!r} ({type(e).__name__}: {e})"
                         ) from None
  if check and digests is not None:
    for name, array in arrays.items():
      if _digest(array) != digests[name]:
        raise ValueError(f"{path!r}: tensor {name!r} does not match its sha256 digest: the "
                         "file was changed or damaged after pgf.deploy.save wrote it; export "
                         "it again")
  flat: dict[str, Any] = {}
  for name, info in kernels.items():
    k = NMKernel(to(arrays.pop(f"{name}/values")), to(arrays.pop(f"{name}/indices")),
                 info["n"], info["m"], info["axis"], info["shape"])
    if check:
      try:
        verify(k)
      except ValueError as e:
        raise ValueError(f"{path!r}: kernel {name!r}: {e}") from None
    flat[name] = k
  for name, array in arrays.items():
    flat[name] = to(array)
  if header["format"] == "pgf-nm-v1":
    return _nest(flat)
  return _build(header["tree"], flat)


def densify(params):
  """Every NMKernel leaf replaced by its dense W ⊙ Φ (for code that needs plain arrays)."""
  return jax.tree.map(lambda x: x.dense() if isinstance(x, NMKernel) else x, params,
                      is_leaf=is_compressed)
