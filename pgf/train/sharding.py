"""Device meshes and shardings from the config: data, FSDP and tensor parallelism.

The mesh has up to three named axes, always in this order (the last varies fastest over the
devices, so "model" lands on the closest devices, where tensor parallelism's frequent
collectives are cheapest):

  data    pure data parallelism: the batch is split, parameters are replicated;
  fsdp    the batch is split *and* parameters / optimizer state are sharded (ZeRO-3 style);
  model   tensor parallelism: FF and attention kernels are split Megatron-style.

`config.mesh` gives the sizes (`-1` = all remaining devices) and the axis types:

  config.mesh = ConfigDict(dict(data=-1, fsdp=1, model=1, axis_types="auto"))

Parameter placement comes from `config.sharding_rules`, a tuple of `(regex, spec)` pairs matched
with `re.search` against the "/"-joined path of every leaf of the train state (e.g.
`params/encoder/encoderblock_0/mlp/fc1/kernel`, and the same suffix under `opt_state/...` for
Adam's moments, so moments are placed like their parameter). The first match wins. A spec is

  "replicated"         every device holds the whole leaf;
  "fsdp"               the largest dimension divisible by the fsdp axis size is split over it
                       (replicated when none is); "fsdp:data+fsdp" names the axes explicitly;
  "fsdp,model"         one entry per dimension: a mesh axis, "a+b" for several, "_" for none;
  a tuple              the same as a PartitionSpec, e.g. ("fsdp", "model") or (None, "model").

Scalars are always replicated. An axis of size 1 is a no-op, so one rule set serves every mesh:
each family's `SHARDING_RULES` (pgf/families/, set as `config.sharding_rules` by its config
builder) shard its kernels for tensor parallelism over "model" and everything over "fsdp", which on
the default `data=-1` mesh is plain data parallelism. `DEFAULT_RULES` is their union, for a config
without a registered family.

N:M masks group along a kernel's contracting axis. They are exact under any sharding, and cost
nothing extra when that axis is unsharded or split into shards whose length is a multiple of M
(see `pgf.masks`); the default rules split contracting axes over "fsdp" (fc1, Q/K/V) and "model"
(fc2, attention out), so keep `width / fsdp` and `mlp_dim / model` multiples of M.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both; "model" sees the whole batch
AXIS_TYPES = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}

DEFAULT_RULES = (
    # SwinV2 (pgf/models/swin.py): Q/K/V/out and MLP kernels have the ViT layout and take the
    # ViT rules below. Its position-bias MLP (attn/cpb_mlp, 2 -> 512 -> heads over a constant
    # table) and per-head logit scale are tiny and read whole by every device; listed first so
    # that "mlp/fc1/kernel$" does not split cpb_mlp/fc1 Megatron-style.
    (r"attn/cpb_mlp/", "replicated"),
    (r"attn/logit_scale$", "replicated"),
    # ViT (pgf/models/vit.py): Megatron-style FF (fc1 column-, fc2 row-parallel) and attention
    # split by heads; kernels are (in, out), Q/K/V (width, heads, head_dim).
    (r"mlp/fc1/kernel$", "fsdp,model"),
    (r"mlp/fc1/bias$", "model"),
    (r"mlp/fc2/kernel$", "model,fsdp"),
    (r"attn/(query|key|value)/kernel$", "fsdp,model,_"),
    (r"attn/(query|key|value)/bias$", "model,_"),
    (r"attn/out/kernel$", "model,_,fsdp"),
    # T5 (pgf/models/t5.py): the same split for the gated FF and the fused-head projections.
    (r"mlp/(wi_0|wi_1)/kernel$", "fsdp,model"),
    (r"mlp/wo/kernel$", "model,fsdp"),
    (r"attention/(query|key|value)/kernel$", "fsdp,model"),
    (r"attention/out/kernel$", "model,fsdp"),
    (r"token_embedder/embedding$", "model,fsdp"),
    (r"logits_dense/kernel$", "fsdp,model"),
    # ResNet (pgf/models/resnet.py): bottleneck and projection convs, HWIO. The input channels
    # (the N:M groups' axis) split over "fsdp", the output channels over "model"; the stem (3
    # input channels) and BatchNorm fall through to the FSDP rule below.
    (r"stage_\d+/block_\d+/(conv_[012]|proj)/kernel$", "_,_,fsdp,model"),
    # Everything else (norms, biases, embeddings, head, Adam's count): FSDP when it divides.
    (r".*", "fsdp"),
)


# ----------------------------------------------------------------------------- the mesh
def mesh_sizes(mesh_config: Mapping[str, Any] | None, device_count: int) -> dict[str, int]:
  """{"data": d, "fsdp": f, "model": m} with the -1 resolved; ValueError naming the field."""
  problems = mesh_problems(mesh_config, device_count)
  if problems:
    raise ValueError("Invalid config:\n  - " + "\n  - ".join(problems))
  return _resolve(mesh_config, device_count)


def _given_sizes(mesh_config) -> dict[str, int]:
  """The three axis sizes; an absent "data" takes the remaining devices unless another does."""
  mesh_config = {} if mesh_config is None else dict(mesh_config)
  data_default = 1 if -1 in (mesh_config.get("fsdp"), mesh_config.get("model")) else -1
  return {axis: mesh_config.get(axis, data_default if axis == "data" else 1)
          for axis in MESH_AXES}


def _resolve(mesh_config, device_count: int) -> dict[str, int]:
  sizes = _given_sizes(mesh_config)
  known = math.prod(size for size in sizes.values() if size != -1)
  return {axis: device_count // known if size == -1 else size for axis, size in sizes.items()}


def mesh_problems(mesh_config, device_count: int) -> list[str]:
  """Every problem with `config.mesh` for `device_count` devices (empty when it is fine)."""
  problems = []
  fields = {} if mesh_config is None else dict(mesh_config)
  for key in fields:
    if key not in MESH_AXES + ("axis_types",):
      problems.append(f"config.mesh.{key}: unknown field; the mesh axes are {MESH_AXES} "
                      "(plus axis_types)")
  axis_types = fields.get("axis_types", "auto")
  if not isinstance(axis_types, str) or axis_types.lower() not in AXIS_TYPES:
    problems.append(f"config.mesh.axis_types={axis_types!r}: one of {sorted(AXIS_TYPES)}")
  sizes = _given_sizes(mesh_config)
  for axis, size in sizes.items():
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or (
        size < 1 and size != -1):
      problems.append(f"config.mesh.{axis}={size!r}: a positive int, or -1 for the remaining "
                      "devices")
  if problems:
    return problems
  wildcards = [axis for axis, size in sizes.items() if size == -1]
  known = math.prod(size for size in sizes.values() if size != -1)
  given = ", ".join(f"{axis}={size}" for axis, size in sizes.items())
  if len(wildcards) > 1:
    problems.append(f"config.mesh ({given}): at most one axis may be -1, got {wildcards}")
  elif wildcards and device_count % known:
    problems.append(f"config.mesh ({given}): the {device_count} devices do not divide by "
                    f"{known}, so config.mesh.{wildcards[0]}=-1 has no integer size")
  elif not wildcards and known != device_count:
    problems.append(f"config.mesh ({given}) uses {known} devices but {device_count} are "
                    "present; set one axis to -1 to take the rest")
  return problems


def axis_type_of(mesh_config) -> AxisType:
  name = ({} if mesh_config is None else dict(mesh_config)).get("axis_types", "auto")
  return AXIS_TYPES[name.lower()]


def build_mesh(mesh_config=None, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """The (data, fsdp, model) mesh of `config.mesh` over `devices` (default: all devices).

  `jax.make_mesh` orders the devices for the hardware topology (TPU ICI rings, GPU NVLink
  islands); all three axes exist even at size 1, so specs naming them are valid on any mesh.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_sizes(mesh_config, len(devices))
  axis_type = axis_type_of(mesh_config)
  return jax.make_mesh(tuple(sizes.values()), MESH_AXES, axis_types=(axis_type,) * 3,
                       devices=devices)


def is_explicit(mesh: jax.sharding.Mesh) -> bool:
  return any(t == AxisType.Explicit for t in mesh.axis_types)


def batch_shard_count(mesh: jax.sharding.Mesh) -> int:
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


# ----------------------------------------------------------------------------- rules -> specs
class Fsdp(NamedTuple):
  """The "fsdp" spec: split the largest dimension divisible by the size of `axes`."""
  axes: tuple[str, ...]


def parse_spec(spec, where: str) -> str | Fsdp | tuple:
  """A rule's spec as "replicated", an `Fsdp` or a tuple of per-dimension entries."""
  if spec is None or spec == "replicated":
    return "replicated"
  if isinstance(spec, str) and (spec == "fsdp" or spec.startswith("fsdp:")):
    axes = tuple(spec[5:].split("+")) if spec.startswith("fsdp:") else ("fsdp",)
    _check_axes(axes, where, spec)
    return Fsdp(axes)
  if isinstance(spec, str):
    entries = [_parse_entry(part.strip()) for part in spec.split(",")]
  elif isinstance(spec, (tuple, list, PartitionSpec)):
    entries = [None if e in (None, "_", "") else e if isinstance(e, str) else tuple(e)
               for e in spec]
  else:
    raise ValueError(f"{where}: spec {spec!r} must be 'replicated', 'fsdp', 'fsdp:AXES', a "
                     "comma-separated per-dimension string like 'fsdp,model' or a tuple")
  for entry in entries:
    names = () if entry is None else (entry,) if isinstance(entry, str) else entry
    _check_axes(names, where, spec)
  return tuple(entries)


def _parse_entry(text: str):
  if text in ("", "_", "None"):
    return None
  names = tuple(text.split("+"))
  return names[0] if len(names) == 1 else names


def _check_axes(names, where: str, spec) -> None:
  unknown = [name for name in names if name not in MESH_AXES]
  if unknown:
    raise ValueError(f"{where}: spec {spec!r} names {unknown}, not mesh axes {MESH_AXES}")


def parse_rules(rules, field: str = "config.sharding_rules") -> list[tuple[re.Pattern, Any, str]]:
  """[(compiled regex, parsed spec, "field[i]")]; ValueError naming `field[i]` if malformed."""
  parsed = []
  for i, rule in enumerate(rules):
    where = f"{field}[{i}]"
    if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"{where}={rule!r}: each rule is a (regex, spec) pair")
    try:
      pattern = re.compile(rule[0])
    except re.error as e:
      raise ValueError(f"{where}: regex {rule[0]!r} does not compile ({e})") from None
    parsed.append((pattern, parse_spec(rule[1], where), where))
  return parsed


def _size(mesh, entry) -> int:
  names = () if entry is None else (entry,) if isinstance(entry, str) else entry
  return math.prod(mesh.shape[name] for name in names)


def leaf_spec(path: str, shape: Sequence[int], parsed_rules, mesh) -> PartitionSpec:
  """The PartitionSpec of one leaf: the first rule whose regex finds `path`."""
  if not shape:
    return PartitionSpec()
  for pattern, spec, where in parsed_rules:
    if not pattern.search(path):
      continue
    if spec == "replicated":
      return PartitionSpec()
    if isinstance(spec, Fsdp):
      return _fsdp_spec(shape, spec.axes, mesh)
    if len(spec) != len(shape):
      raise ValueError(f"{where}: spec {spec} has {len(spec)} entries but {path} has shape "
                       f"{tuple(shape)}")
    for dim, entry in zip(shape, spec):
      if dim % _size(mesh, entry):
        raise ValueError(f"{where}: {path} shape {tuple(shape)} cannot be split as {spec} on "
                         f"mesh {dict(mesh.shape)} ({dim} is not divisible by "
                         f"{_size(mesh, entry)}); change the rule or config.mesh")
    return PartitionSpec(*spec)
  return PartitionSpec()


def _fsdp_spec(shape, axes, mesh) -> PartitionSpec:
  """Splits the largest dimension divisible by the axes' size (ties: the earlier dimension)."""
  size = _size(mesh, axes)
  if size == 1:
    return PartitionSpec()
  candidates = [(dim, -i) for i, dim in enumerate(shape) if dim % size == 0]
  if not candidates:
    return PartitionSpec()
  _, neg_index = max(candidates)
  entries = [None] * len(shape)
  entries[-neg_index] = axes[0] if len(axes) == 1 else axes
  return PartitionSpec(*entries)


def tree_shardings(tree, mesh: jax.sharding.Mesh, rules=DEFAULT_RULES,
                   field: str = "config.sharding_rules"):
  """A pytree of NamedSharding like `tree` (arrays or ShapeDtypeStructs) from the rules."""
  from pgf.sparsify import leaf_path  # pylint: disable=g-import-not-at-top
  parsed = parse_rules(rules, field)
  return jax.tree_util.tree_map_with_path(
      lambda kp, leaf: NamedSharding(mesh, leaf_spec(leaf_path(kp), np.shape(leaf), parsed,
                                                     mesh)),
      tree)


def with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying `shardings` (an orbax restore target, an eval_shape result)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


def describe(shardings, limit: int = 12) -> str:
  """One line per distinct spec with how many leaves use it and an example path (for logs)."""
  from pgf.sparsify import leaf_path  # pylint: disable=g-import-not-at-top
  groups: dict[str, list[str]] = {}
  for kp, s in jax.tree_util.tree_flatten_with_path(shardings)[0]:
    groups.setdefault(str(tuple(s.spec)), []).append(leaf_path(kp))
  lines = [f"{spec}: {len(paths)} leaves, e.g. {paths[0]}" for spec, paths in groups.items()]
  return "\n".join(lines[:limit])


# ----------------------------------------------------------------------------- batches
def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (example) dimension split over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch, sharding: NamedSharding):
  """The global jax.Array batch from this process's numpy slice (one per process)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)


def local_multiple(mesh: jax.sharding.Mesh) -> int:
  """Local batch rows must be a multiple of this for the global batch to split evenly."""
  shards = batch_shard_count(mesh)
  return shards // math.gcd(shards, jax.process_count())


def pad_rows(local_batch: Mapping[str, np.ndarray], multiple: int):
  """Pads every array along axis 0 to a multiple of `multiple` with zeros (valid=False).

  Eval batches are padded so they split over the devices; their metrics are sums weighted by
  `valid`, so the padding counts for nothing.
  """
  rows = len(next(iter(local_batch.values())))
  extra = -rows % multiple
  if not extra:
    return local_batch
  if "valid" not in local_batch:
    raise ValueError(f"a batch of {rows} rows does not split over {multiple} devices and has no "
                     "'valid' key to mark padding; choose a batch size divisible by the number "
                     "of data-parallel devices")
  return {k: np.concatenate([v, np.zeros((extra,) + v.shape[1:], v.dtype)])
          for k, v in local_batch.items()}


# ----------------------------------------------------------------------------- jitted functions
def jit(fn: Callable, mesh: jax.sharding.Mesh, **jit_kwargs) -> Callable:
  """`jax.jit(fn, **jit_kwargs)`, traced and run with `mesh` as the context mesh.

  Explicit axes need the context mesh while tracing (sharding-in-types ops resolve bare
  PartitionSpecs against it); on Auto meshes the shardings in `jit_kwargs` say everything, and
  the plain jitted function is returned.
  """
  jitted = jax.jit(fn, **jit_kwargs)
  if not is_explicit(mesh):
    return jitted

  def run(*args, **kwargs):
    with jax.set_mesh(mesh):
      return jitted(*args, **kwargs)

  def lower(*args, **kwargs):  # ahead-of-time compilation (pgf.aot) under the same mesh
    with jax.set_mesh(mesh):
      return jitted.lower(*args, **kwargs)

  run.lower = lower
  return run


def auto_model(fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """fn for a model written without sharding annotations (Flax linen), on any mesh.

  On an Explicit mesh, a plain model's matmuls between sharded operands are type errors (the
  output sharding is ambiguous). The model then runs with Auto axes, where XLA picks its
  internal shardings, and returns replicated outputs (losses and metric sums are scalars);
  everything around it -- N:M masks, gradient flow, the optimizer -- keeps Explicit types.
  """
  if not is_explicit(mesh):
    return fn
  return jax.sharding.auto_axes(fn, out_sharding=NamedSharding(mesh, PartitionSpec()))


def to_auto(tree, mesh: jax.sharding.Mesh):
  """Arrays on an Explicit mesh re-labelled onto the same devices with Auto axes (no copy of
  data: same devices and layout), for host-side code that calls a plain model."""
  if not is_explicit(mesh):
    return tree
  auto_mesh = jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                                axis_types=(AxisType.Auto,) * len(mesh.axis_names))
  return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(auto_mesh, x.sharding.spec)),
                      tree)


# ----------------------------------------------------------------------------- config checks
def config_problems(config, device_count: int) -> list[str]:
  """Problems with config.mesh, config.sharding_rules and the batch split (field named)."""
  mesh_config = config.get("mesh")
  problems = mesh_problems(mesh_config, device_count)
  try:
    parse_rules(config.get("sharding_rules", DEFAULT_RULES))
  except ValueError as e:
    problems.append(str(e))
  batch = config.get("batch_size")
  if not problems and isinstance(batch, int) and batch > 0:
    sizes = _resolve(mesh_config, device_count)
    shards = math.prod(sizes[axis] for axis in BATCH_AXES)
    if batch % shards:
      problems.append(f"config.batch_size={batch} is not divisible by the {shards} "
                      f"data-parallel devices (config.mesh data x fsdp = "
                      f"{sizes['data']} x {sizes['fsdp']})")
    micro = config.get("micro_batches", 1)
    per_micro = config.get("device_micro_batch", 0) or 0
    if (not per_micro and isinstance(micro, int) and micro > 1 and not batch % shards
        and (batch // shards) % micro):
      problems.append(f"config.micro_batches={micro}: each of the {shards} data-parallel "
                      f"devices holds {batch // shards} examples of config.batch_size={batch}, "
                      f"not divisible into {micro} micro-batches")
  return problems


def rules_of(config):
  """config.sharding_rules, or for configs that do not set them their family's SHARDING_RULES
  (pgf/families/), or DEFAULT_RULES for a config without a registered family."""
  rules = config.get("sharding_rules")
  if rules:
    return rules
  from pgf import families  # pylint: disable=g-import-not-at-top
  try:
    return families.of_config(config).SHARDING_RULES
  except (ValueError, AttributeError):
    return DEFAULT_RULES


__all__ = ["MESH_AXES", "BATCH_AXES", "DEFAULT_RULES", "build_mesh", "mesh_sizes",
           "tree_shardings", "with_shardings", "batch_sharding", "global_batch", "pad_rows",
           "jit", "auto_model", "to_auto", "config_problems", "rules_of", "describe"]
