"""ViT end to end through `train_and_evaluate`: mock ImageNet, the digits demo, every config file."""

import dataclasses
import glob
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import pgf
from pgf.train import config_lib
from pgf.models import vit as vit_lib
from pgf.train import build_recipe, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "vit_*.py")))


def load_config(path, arg=None):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_vit(config, patch=8):
  """Shrinks any ViT config to a 1-block model that trains in a second."""
  config.model.update(variant=f"Ti/{patch}", width=32, depth=1, num_heads=2, mlp_dim=64)
  config.update(log_every=1, eval_every=0, checkpoint_every=100, async_checkpointing=False)
  return config


def test_one_step_on_mock_imagenet(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  config = tiny_vit(load_config(os.path.join(ROOT, "configs", "vit_1_16.py")))
  config.data.image_size = 32
  config.data.workers = 0  # worker processes are tested in test_input_pipeline.py
  config.update(batch_size=4, eval_batch_size=4, total_steps=1)
  config.optim.update(warmup_epochs=0.0, warmup_steps=0)
  with tfds.testing.mock_data(num_examples=8):
    summary = train_and_evaluate(config, str(tmp_path))
  assert summary["final_step"] == 1
  for kind in ("current", "deployed"):
    assert 0.0 <= summary[f"{kind}_accuracy"] <= 1.0
    assert np.isfinite(summary[f"{kind}_loss"])
  for name in ("config.json", "recipe.json", "summary.json", "metrics.jsonl"):
    assert os.path.exists(tmp_path / name), name
  assert os.listdir(tmp_path / "tensorboard")
  assert json.loads((tmp_path / "config.json").read_text())["data"]["name"] == "imagenet2012"


def test_demo_trains_and_deploys_exact_nm(tmp_path):
  config = tiny_vit(load_config(os.path.join(ROOT, "configs", "vit_1_16.py"), "demo"), patch=4)
  config.update(total_steps=12, log_every=4, eval_every=12, checkpoint_every=6,
                eval_batch_size=300)
  summary = train_and_evaluate(config, str(tmp_path))
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_lines = [l for l in lines if l["kind"] == "train"]
  assert [l["step"] for l in train_lines] == [4, 8, 12]
  for key in ("loss", "accuracy", "learning_rate", "decay", "patterns", "sparsity",
              "steps_per_sec", "examples_per_sec", "eta_seconds", "phase"):
    assert key in train_lines[-1], key
  # 12 steps: 5% dense (1 step), 10% fine-tune (1 step) -> the last logged step is fine-tuning.
  assert train_lines[-1]["phase"] == "finetune" and train_lines[-1]["decay"] == 0.0
  assert train_lines[-1]["sparsity"] == pytest.approx(15 / 16)
  assert [l["kind"] for l in lines].count("eval") == 1
  state = summary["state"]
  deployed = pgf.finalize(state["params"], build_recipe(config, 12))
  blocks = [v for k, v in deployed["encoder"].items() if k.startswith("encoderblock_")]
  assert blocks
  for block in blocks:
    for name in ("fc1", "fc2"):
      kernel = np.asarray(block["mlp"][name]["kernel"])
      groups = kernel.reshape(-1, 16, kernel.shape[1])
      np.testing.assert_array_equal((groups != 0).sum(axis=1), 1)
      assert np.any(np.asarray(block["mlp"][name]["bias"]) != 0)  # the bias is kept, dense
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [6, 12]
  with open(tmp_path / "summary.json") as f:
    written = json.load(f)
  assert written["deployed_accuracy"] == summary["deployed_accuracy"]


FIT_METHODS = ("dense", "sr_ste", "mdgf_linear", "mdgf_exp", "sdgf_stepwise", "sdgf_geometric",
               "mdgf_exp+sdgf_geometric")


def test_every_vit_config_runs_every_method_on_vit_b16():
  """Every paper row x every method fits ViT-B/16's kernels as the trainer builds it (with
  SDGF-geometric's k lowered per rule where 8*M does not divide, e.g. 1:128's 768-wide fc1)."""
  model = vit_lib.ViT(num_classes=1000, **vit_lib.decode_variant("B/16"))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 224, 224, 3)),
                                             train=False))["params"]
  lowered = {}
  for path in VIT_CONFIGS:
    for method in FIT_METHODS:
      config = load_config(path, f"method={method}")
      config_lib.validate(config)
      recipe, notes = pgf.fit_sdgf_k(params, build_recipe(config, 100_000))
      pgf.check_params(params, recipe)
      if notes:
        lowered[(os.path.basename(path), method)] = [r.sdgf_k for r in recipe.rules]
  # Only 1:128 needs it: k=2 (2:256 divides 768); every other row keeps the released k = 8.
  assert lowered == {("vit_1_128.py", m): [2] for m in ("sdgf_geometric",
                                                       "mdgf_exp+sdgf_geometric")}


def test_every_vit_demo_runs_every_method():
  """The `:demo` twin of every row fits its small model with every method (1:128 widens it)."""
  from pgf.families import vit as vit_family  # pylint: disable=g-import-not-at-top
  for path in VIT_CONFIGS:
    for method in FIT_METHODS:
      config = load_config(path, f"demo,method={method}")
      config_lib.validate(config)
      model = vit_family.vit_model(config, 10)
      params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 16, 16, 1)),
                                                 train=False))["params"]
      recipe, _ = pgf.fit_sdgf_k(params, build_recipe(config, config.total_steps))
      pgf.check_params(params, recipe)


@pytest.mark.parametrize("path", VIT_CONFIGS, ids=os.path.basename)
def test_every_vit_config_builds_its_recipe_for_vit_b16(path):
  config = load_config(path)
  config_lib.validate(config)
  assert config.model.variant == "B/16" and config.batch_size == 4096
  assert config.optim.lr == 1e-3 and config.optim.reference_batch == 4096
  assert config.total_epochs == 350 and config.optim.warmup_epochs == 15
  recipe = build_recipe(config, 100_000)
  model = vit_lib.ViT(num_classes=1000, **vit_lib.decode_variant(config.model.variant))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 224, 224, 3)),
                                             train=False))["params"]
  matched = pgf.check_params(params, recipe)
  names = {path.split("/")[-2] for path in matched}
  assert {"fc1", "fc2"} <= names
  assert not any(path.startswith(("embedding", "head")) or "/out/" in path for path in matched)
  # Variants through the ':arg' string.
  other = load_config(path, "method=sr_ste,variant=S/16")
  assert other.sparsity.method == "sr_ste" and other.model.variant == "S/16"
  demo = load_config(path, "demo")
  config_lib.validate(demo)
  assert demo.data.name == "digits"


def test_config_arg_typo_is_an_error():
  with pytest.raises(ValueError, match="metod"):
    load_config(VIT_CONFIGS[0], "metod=sr_ste")


def test_main_rejects_an_override_typo(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "pgf.main", "--config=configs/vit_1_16.py:demo",
       f"--workdir={tmp_path}", "--config.sparsity.metod=sr_ste"],
      capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert result.returncode != 0
  assert "metod" in result.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def test_deployed_metrics_use_the_stored_masks(tmp_path):
  """With mask_update_every > 1 the trainer deploys the masks the forward pass used."""
  from pgf.train.tasks import build_task  # pylint: disable=g-import-not-at-top
  config = tiny_vit(load_config(os.path.join(ROOT, "configs", "vit_1_16.py"), "demo"), patch=4)
  config.update(total_steps=12, log_every=12, eval_every=12, checkpoint_every=12,
                eval_batch_size=300)
  config.optim.lr = 3e-2  # moves W between refreshes, so recomputed masks would differ
  config.sparsity.update(method="sdgf_stepwise", mask_update_every=5, dense_fraction=0.25,
                         finetune_fraction=0.25)
  summary = train_and_evaluate(config, str(tmp_path))
  state, recipe = summary["state"], build_recipe(config, 12)
  masks = pgf.masks_from_state(state["opt_state"])
  task = build_task(config)

  def accuracy(params):
    sums = [jax.device_get(task.eval_fn(params, batch)) for batch in task.eval_batches()]
    return sum(float(s["accuracy"]) for s in sums) / sum(float(s["count"]) for s in sums)

  stored = pgf.finalize(state["params"], recipe, masks=masks)
  assert summary["deployed_accuracy"] == pytest.approx(accuracy(stored), abs=1e-6)
  with pytest.raises(ValueError, match="mask_update_every=5"):  # the omission is an error now
    pgf.finalize(state["params"], recipe)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.all(np.asarray(a) == np.asarray(b))),
                                   pgf.finalize(state["params"], recipe, state["opt_state"]),
                                   stored))
  recomputed = pgf.finalize(state["params"], dataclasses.replace(recipe, mask_update_every=1))
  differ = [np.any(np.asarray(a) != np.asarray(b)) for a, b in
            zip(jax.tree.leaves(stored), jax.tree.leaves(recomputed))]
  assert any(differ)  # the test would catch a trainer that recomputes the masks
