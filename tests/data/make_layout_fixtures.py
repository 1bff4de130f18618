"""Writes the layout fixtures of tests/test_layout.py (run once, with the code they pin down).

  python tests/data/make_layout_fixtures.py

* tests/data/config_shapes.json: for every configs/*.py (bare and `:demo`), the parameter shapes
  (jax.eval_shape of the model's init, no data read) and the recipe dict.
* tests/data/vit_ckpt/: a two-step run of the smallest ViT digits config (its checkpoints,
  config.json, recipe.json), plus params_sum.json: the sum and shape of every saved param leaf.

These were written (commit 4415ceb, with this script's imports of then: pgf.train, pgf.text_tasks
and pgf.deploy.model.abstract_model) by the code before the trainer moved into pgf/train/ and the families into
pgf/families/; the tests check that today's code reads the same checkpoint and builds the same
models and recipes.
"""

import glob
import importlib.util
import json
import os
import shutil
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402


def load_config(path, arg=None):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_vit_config(steps=2):
  """The smallest trainable config: configs/vit_2_4.py:demo shrunk to one 8-wide block."""
  config = load_config(os.path.join(ROOT, "configs", "vit_2_4.py"), "demo")
  config.model.update(width=8, depth=1, num_heads=2, mlp_dim=16)
  config.update(batch_size=16, eval_batch_size=300, total_steps=steps, log_every=1,
                eval_every=0, checkpoint_every=2, keep_checkpoints=1, async_checkpointing=False)
  config.optim.update(warmup_steps=1)
  return config


def shapes(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): list(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def shape_digest(shape_dict):
  """{leaves, params, sha256}: the count and size of the leaves and a hash of every path:shape."""
  import hashlib
  text = json.dumps(sorted(shape_dict.items()))
  return {"leaves": len(shape_dict), "params": int(sum(np.prod(s) for s in shape_dict.values())),
          "sha256": hashlib.sha256(text.encode()).hexdigest()}


def main():
  from pgf import train
  from pgf import families
  out = {}
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    name = os.path.basename(path)
    for arg in (None, "demo"):
      config = load_config(path, arg)
      if config.model.name == "t5" and config.data.get("tokenizer") not in ("byte", None):
        config.data.tokenizer = "byte"  # the vocabulary comes from vocab_size (WMT's 32k)
      _, params, _ = families.of_config(config).abstract_model(config)
      recipe = train.build_recipe(config, 1000)
      key = name + (":" + arg if arg else "")
      out[key] = dict(model_name=config.model.name, **shape_digest(shapes(params)),
                      recipe=json.loads(json.dumps(recipe.to_dict())))
      print(key, out[key]["leaves"], "leaves")
  with open(os.path.join(HERE, "config_shapes.json"), "w") as f:
    json.dump(out, f, indent=1, sort_keys=True)

  workdir = os.path.join(HERE, "vit_ckpt")
  shutil.rmtree(workdir, ignore_errors=True)
  summary = train.train_and_evaluate(tiny_vit_config(), workdir)
  params = jax.device_get(summary["state"]["params"])
  sums = {k: [float(np.sum(np.asarray(v, np.float64))), list(np.shape(v))]
          for k, v in ((("/".join(str(getattr(p, "key", p)) for p in path)), leaf)
                       for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0])}
  with open(os.path.join(workdir, "params_sum.json"), "w") as f:
    json.dump({"step": int(summary["state"]["step"]), "params": sums}, f, indent=1,
              sort_keys=True)
  for extra in os.listdir(workdir):  # only the checkpoint, its config and recipe are kept
    if extra not in ("checkpoints", "config.json", "recipe.json", "params_sum.json"):
      p = os.path.join(workdir, extra)
      shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


if __name__ == "__main__":
  main()
