"""The 8-device half of tests/test_sharding.py, run in its own process.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
      python tests/sharding_child.py BASE_DIR

Fake CPU devices must be configured before JAX starts, and the main suite keeps one device, so
this runs as a subprocess. The parent has already trained every model of `models()` on one device
in BASE_DIR/1dev_<model> and written its final params and masks there (`save_arrays`). This
process, on 8 devices:

  * trains the same configs on every mesh of `MESHES` (BASE_DIR/8dev_<model>_<mesh>) and saves
    their final params, for the parent to compare losses and restore on one device;
  * restores the one-device checkpoints under each mesh with the target shardings, checks the
    placement and values, and computes the masks there (sharded, jitted);
  * checks `nm_mask` under sharded contracting axes, Auto and Explicit, against one device.

Results go to BASE_DIR/child.json; the parent asserts on them.
"""

import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

STEPS = 5
MESHES = {
    "data8": dict(data=8, fsdp=1, model=1),
    "fsdp4_model2": dict(data=1, fsdp=4, model=2),
    "fsdp4_model2_explicit": dict(data=1, fsdp=4, model=2, axis_types="explicit"),
}
# Explicit axes run the same code with sharding in types; once (ViT) is enough to prove it.
# T5 runs where it differs from ViT (heads and MLP split over "model", params over "fsdp");
# pure data parallelism is model-agnostic and the ViT run covers it.
MESHES_OF = {"vit": ("data8", "fsdp4_model2", "fsdp4_model2_explicit"),
             "t5": ("fsdp4_model2",)}

# (shape, axis, spec, m, n): contracting axes split into shards that hold whole groups, shards
# smaller than M (M > shard), several grouped axes and a non-contiguous grouping.
MASK_CASES = [
    ((256, 16), 0, ("fsdp", "model"), 16, 1),
    ((256, 16), 0, ("fsdp", "model"), 128, 5),
    ((64, 32), 0, (("fsdp", "model"), None), 16, 3),
    ((64, 24), 0, ("model", "fsdp"), 64, 63),
    ((16, 64), 1, ("model", "fsdp"), 32, 2),
    ((4, 8, 16), (0, 1), ("model", None, "fsdp"), 16, 1),
    ((4, 8, 16), (0, 1), (None, "fsdp", "model"), 32, 4),
    ((8, 6, 16), (2, 0), ("model", None, "fsdp"), 128, 16),
]


def have_t5() -> bool:
  return importlib.util.find_spec("pgf.train.text_tasks") is not None


def models() -> tuple[str, ...]:
  return ("vit", "t5") if have_t5() else ("vit",)


def build_config(model: str, mesh: dict | None = None):
  """A tiny sparse ViT or T5 config that trains STEPS steps in seconds, on `mesh`."""
  from pgf.families import t5 as t5_family  # pylint: disable=g-import-not-at-top
  from pgf.train import config_lib  # pylint: disable=g-import-not-at-top
  if model == "vit":
    config = config_lib.load(os.path.join(ROOT, "configs", "vit_1_16.py:demo"))
    config.model.update(variant="Ti/4", width=32, depth=2, num_heads=2, mlp_dim=64)
    # 300 eval images do not split over 8 devices: the loop pads them (valid=False).
    config.update(batch_size=32, eval_batch_size=300)
  else:
    config = config_lib.load(os.path.join(ROOT, "configs", "t5_pretrain.py:demo"))
    config.model.update(variant="tiny", emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                        num_encoder_layers=1, num_decoder_layers=1)
    config.data.update(input_length=48, num_eval_examples=20)
    config.sparsity.update(method="mdgf_exp", rules=t5_family.t5_rules("1:8", qkv="1:8"))
    config.update(batch_size=16, eval_batch_size=12)
  config.sparsity.update(dense_fraction=0.2, finetune_fraction=0.2)
  config.optim.update(lr=1e-2, reference_batch=config.batch_size, warmup_steps=0)
  config.update(total_steps=STEPS, log_every=1, eval_every=0, checkpoint_every=100,
                async_checkpointing=False, seed=3)
  config_lib.add_sharding(config, **(mesh or {}))
  return config


def train_losses(workdir: str) -> list[float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  return [line["loss"] for line in lines if line["kind"] == "train"]


def flat(tree) -> dict:
  """{leaf path: numpy array} of a pytree (params, masks)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from pgf.sparsify import leaf_path  # pylint: disable=g-import-not-at-top
  return {leaf_path(kp): np.asarray(jax.device_get(x))
          for kp, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def save_arrays(path: str, tree) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  np.savez(path, **flat(tree))


def load_arrays(path: str) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def masks_fn(config):
  """(params, step) -> {path: mask} for the config's recipe, as the train loop builds it."""
  import pgf  # pylint: disable=g-import-not-at-top
  from pgf.train import build_recipe  # pylint: disable=g-import-not-at-top
  recipe = build_recipe(config, config.total_steps)
  return lambda params, step: pgf.current_masks(params, recipe, step)


def spec_of(array) -> list:
  return [list(e) if isinstance(e, tuple) else e for e in array.sharding.spec]


def run_model(base: str, model: str, out: dict) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from pgf.train import sharding  # pylint: disable=g-import-not-at-top
  from pgf.train.checkpointing import Checkpointer  # pylint: disable=g-import-not-at-top
  from pgf.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  single_params = load_arrays(os.path.join(base, f"1dev_{model}", "params.npz"))
  for name in MESHES_OF[model]:
    config = build_config(model, MESHES[name])
    workdir = os.path.join(base, f"8dev_{model}_{name}")
    summary = train_and_evaluate(config, workdir)
    state = summary.pop("state")
    save_arrays(os.path.join(workdir, "params.npz"), state["params"])
    result = {"losses": train_losses(workdir),
              "eval": {k: v for k, v in summary.items() if k.startswith(("current_", "deployed_"))},
              "specs": {path: spec_of(x) for path, x in
                        zip(flat(state["params"]), jax.tree.leaves(state["params"]))}}

    # One device -> this mesh: the target carries this mesh's shardings.
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
    checkpointer = Checkpointer(os.path.join(base, f"1dev_{model}"))
    restored, step = checkpointer.restore_latest(target)
    checkpointer.close()
    result["restored_step"] = step
    result["restored_shardings_match"] = all(
        r.sharding == t.sharding for r, t in zip(jax.tree.leaves(restored), jax.tree.leaves(target)))
    restored_params = flat(restored["params"])
    result["restored_equal"] = sorted(restored_params) == sorted(single_params) and all(
        np.array_equal(restored_params[k], single_params[k]) for k in single_params)
    mesh = sharding.build_mesh(config.mesh)
    compute = sharding.jit(masks_fn(config), mesh)
    save_arrays(os.path.join(workdir, "restored_masks.npz"),
                compute(restored["params"], np.int32(STEPS - 1)))
    out[f"{model}/{name}"] = result


def check_masks() -> list[str]:
  """Every MASK_CASE on Auto and Explicit meshes against the one-device mask; failures."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import AxisType, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from pgf.masks import nm_mask  # pylint: disable=g-import-not-at-top
  failures = []
  for axis_type in (AxisType.Auto, AxisType.Explicit):
    mesh = jax.make_mesh((4, 2), ("fsdp", "model"), axis_types=(axis_type,) * 2)
    for shape, axis, spec, m, n in MASK_CASES:
      # Half-integers: most groups hold exact ties, so the tie-break is checked too.
      x = jnp.round(2 * jax.random.normal(jax.random.key(len(failures)), shape)) / 2
      want = np.asarray(nm_mask(x, n, m, axis))  # one device
      sharding = NamedSharding(mesh, PartitionSpec(*spec))
      with jax.set_mesh(mesh):
        got = jax.jit(lambda w, k, m=m, axis=axis: nm_mask(w, k, m, axis))(
            jax.device_put(x, sharding), jnp.int32(n))
      where = f"{axis_type.name} {shape} axis={axis} spec={spec} {n}:{m}"
      if not np.array_equal(np.asarray(got), want):
        failures.append(f"{where}: mask differs from one device")
      if axis_type == AxisType.Explicit and got.sharding.spec != sharding.spec:
        failures.append(f"{where}: output sharding {got.sharding.spec} != input {spec}")
  return failures


def main():
  base = sys.argv[1]
  import jax  # pylint: disable=g-import-not-at-top
  out = {"device_count": jax.device_count(), "models": list(models())}
  if jax.device_count() != 8:
    raise SystemExit(f"expected 8 fake devices, got {jax.device_count()} (XLA_FLAGS not set?)")
  out["mask_failures"] = check_masks()
  for model in models():
    run_model(base, model, out)
  with open(os.path.join(base, "child.json"), "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
