"""Preemption and failure: exact resume after SIGKILL, SIGTERM, NaN guard, torn checkpoints.

Each run is a real subprocess (`tests/reliability_child.py`) with the fault injected at an exact
step, so SIGKILL really leaves no chance to clean up. Workdirs contain spaces on purpose.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = os.path.join(ROOT, "tests", "reliability_child.py")
TOTAL = 40
# A 1-block ViT on digits; SDGF-stepwise with 15 dense steps, so a kill at step 13 is resumed
# before the end of the dense phase and the rerun crosses it and all five 1:16 stage changes
# (15:16 -> 8:16 -> 4:16 -> 2:16 -> 1:16) and the fine-tune edge.
VIT = {
    "config": "configs/vit_1_16.py:demo",
    "overrides": {
        "model.variant": "Ti/4", "model.width": 32, "model.depth": 1, "model.num_heads": 2,
        "model.mlp_dim": 64, "batch_size": 32, "total_steps": TOTAL, "log_every": 5,
        "checkpoint_every": 5, "eval_every": 0, "eval_batch_size": 300, "keep_checkpoints": 3,
        "optim.warmup_steps": 4, "sparsity.method": "sdgf_stepwise",
        "sparsity.dense_fraction": 0.375, "sparsity.finetune_fraction": 0.1,
    },
}


# A 1+1-layer T5 pre-training on Shakespeare span corruption, with FF at 1:4 SDGF-stepwise
# after 8 dense steps: the kill at step 7 lands before the dense phase ends.
T5 = {
    "config": "configs/t5_pretrain.py:demo",
    "overrides": {
        "model.emb_dim": 32, "model.num_heads": 2, "model.head_dim": 16, "model.mlp_dim": 64,
        "model.num_encoder_layers": 1, "model.num_decoder_layers": 1, "data.input_length": 32,
        "data.num_eval_examples": 16, "batch_size": 8, "eval_batch_size": 16,
        "total_steps": 16, "log_every": 4, "checkpoint_every": 3, "eval_every": 0,
        "optim.warmup_steps": 2, "sparsity.method": "sdgf_stepwise",
        "sparsity.rules": [[r"(encoder|decoder)/layers_\d+/mlp/(wi_0|wi_1|wo)/kernel", "1:4"]],
        "sparsity.dense_fraction": 0.5, "sparsity.finetune_fraction": 0.125,
    },
}


def run_child(workdir, spec=VIT, expect_rc=0, **faults):
  spec = dict(spec, workdir=str(workdir), **faults)
  result = subprocess.run([sys.executable, CHILD, json.dumps(spec)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == expect_rc, (result.returncode, result.stdout[-3000:],
                                          result.stderr[-3000:])
  summary = None
  for line in result.stdout.splitlines():
    if line.startswith("SUMMARY "):
      summary = json.loads(line[len("SUMMARY "):])
  return result, summary


def final_params(workdir):
  with np.load(os.path.join(workdir, "final_params.npz")) as data:
    return {k: data[k] for k in data.files}


def assert_bit_identical(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def checkpoint_steps(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("runs") / "uninterrupted run"
  _, summary = run_child(workdir)
  assert summary["final_step"] == TOTAL and summary["resumed_from"] is None
  return workdir


def test_sigkill_then_rerun_is_bit_identical(uninterrupted, tmp_path):
  workdir = tmp_path / "killed run"
  result, _ = run_child(workdir, expect_rc=-9, kill_at=13)
  assert not os.path.exists(workdir / "final_params.npz")
  assert 5 in checkpoint_steps(workdir) and max(checkpoint_steps(workdir)) <= 10
  _, summary = run_child(workdir)
  assert summary["resumed_from"] in (5, 10) and summary["final_step"] == TOTAL
  assert_bit_identical(final_params(workdir), final_params(uninterrupted))
  # Metrics after the restored step were dropped and logged again: one line per log step.
  steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()
           if json.loads(l)["kind"] == "train"]
  assert steps == list(range(5, TOTAL + 1, 5))


def test_sigterm_saves_the_current_step_and_exits_with_the_preemption_status(uninterrupted,
                                                                            tmp_path):
  from pgf.main import PREEMPTED_EXIT_CODE  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "preempted run"
  result, summary = run_child(workdir, expect_rc=PREEMPTED_EXIT_CODE, term_at=22)
  # The signal arrives while step 22 is being fetched; that step finishes, is saved, and the
  # process exits with the status that tells a scheduler to run it again.
  assert summary["preempted"] is True and summary["stopped_at"] == 23
  assert 23 in checkpoint_steps(workdir)
  assert "Received signal" in result.stderr
  logged = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert max(logged) == 20  # flushed up to the last log step
  _, summary = run_child(workdir)
  assert summary["resumed_from"] == 23
  assert_bit_identical(final_params(workdir), final_params(uninterrupted))


def test_nan_stops_with_the_step_and_keeps_the_good_checkpoint(uninterrupted, tmp_path):
  workdir = tmp_path / "diverged run"
  result, _ = run_child(workdir, expect_rc=3, nan_at=17)
  message = result.stdout
  assert "NonFiniteError" in message and "loss (nan) at step 17" in message
  assert "last good checkpoint (step 15) is intact" in message
  # Nothing at or after the bad step was saved; step 15 is intact and restorable.
  assert max(checkpoint_steps(workdir)) == 15
  _, summary = run_child(workdir)  # the rerun (here without the poisoned batch) resumes
  assert summary["resumed_from"] == 15
  assert_bit_identical(final_params(workdir), final_params(uninterrupted))


def test_torn_latest_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path):
  workdir = tmp_path / "torn run"
  shutil.copytree(uninterrupted, workdir)
  os.remove(workdir / "final_params.npz")
  assert checkpoint_steps(workdir) == [30, 35, 40]
  for root, _, files in os.walk(workdir / "checkpoints" / "40"):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(root, name)) // 3)
  result, summary = run_child(workdir)
  assert summary["resumed_from"] == 35
  assert "could not be restored" in result.stderr
  assert os.path.isdir(workdir / "checkpoints_corrupt" / "40")  # moved aside, not deleted
  assert checkpoint_steps(workdir) == [30, 35, 40]
  assert_bit_identical(final_params(workdir), final_params(uninterrupted))


def test_keep_last_k_never_deletes_the_only_good_checkpoint(tmp_path):
  import jax.numpy as jnp
  from pgf.train.checkpointing import Checkpointer
  state = {"w": jnp.arange(4.0)}
  checkpointer = Checkpointer(str(tmp_path / "with space"), keep=1, async_save=False)
  checkpointer.save(1, state)
  checkpointer.save(2, {"w": jnp.arange(4.0) + 1})
  assert checkpointer.all_steps() == [2]
  checkpointer.close()
  step_dir = tmp_path / "with space" / "checkpoints" / "2"
  for root, _, files in os.walk(step_dir):
    for name in files:
      open(os.path.join(root, name), "w").close()  # torn: every file empty
  checkpointer = Checkpointer(str(tmp_path / "with space"), keep=1, async_save=False)
  restored, step = checkpointer.restore_latest({"w": jnp.zeros(4)})
  assert restored is None and step is None  # nothing good left: start fresh, don't crash
  assert os.path.isdir(tmp_path / "with space" / "checkpoints_corrupt" / "2")
  checkpointer.save(1, state)
  restored, step = checkpointer.restore_latest({"w": jnp.zeros(4)})
  assert step == 1 and np.array_equal(restored["w"], np.arange(4.0))
  checkpointer.close()


def test_saves_are_atomic_directories(tmp_path):
  """Orbax writes into a temporary directory and renames it when complete: a step directory
  that exists is finished, and unfinished ones are never counted as steps."""
  import jax.numpy as jnp
  from pgf.train.checkpointing import Checkpointer
  checkpointer = Checkpointer(str(tmp_path), keep=2, async_save=True)
  checkpointer.save(3, {"w": jnp.ones(1000)})
  checkpointer.wait()
  names = os.listdir(tmp_path / "checkpoints")
  assert names == ["3"], names
  os.makedirs(tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-123")  # a save cut short
  assert checkpointer.all_steps() == [3]
  checkpointer.close()


def test_every_config_problem_is_reported_at_once_before_compiling(tmp_path):
  """One ValueError names each bad field and value; nothing is compiled or written."""
  from test_train_vit import load_config  # pylint: disable=import-outside-toplevel
  from pgf.train import sharding
  from pgf.train import train_and_evaluate
  config = load_config(os.path.join(ROOT, "configs", "vit_1_16.py"), "demo")
  config.sparsity.method = "mdgf_expo"
  config.sparsity.dense_fraction = 0.7
  config.sparsity.finetune_fraction = 0.5
  config.total_steps = -5
  config.total_epochs = 0.0
  config.batch_size = 100
  config.data.name = "imagenet2013"
  with pytest.raises(ValueError) as info:
    train_and_evaluate(config, str(tmp_path / "w"))
  message = str(info.value)
  for fragment in ("'mdgf_expo'", "dense_fraction + finetune_fraction = 1.2",
                   "config.total_steps=-5", "config.data.name='imagenet2013'"):
    assert fragment in message, (fragment, message)
  # Batch divisibility is checked against the devices in use (8 on a TPU v3-8, say).
  problems = sharding.config_problems(config, device_count=8)
  assert any("config.batch_size=100 is not divisible by the 8 data-parallel devices" in p
             for p in problems), problems


def test_rules_that_do_not_fit_the_model_are_reported_with_the_dataset(tmp_path):
  from test_train_vit import load_config  # pylint: disable=import-outside-toplevel
  from pgf.train import train_and_evaluate
  config = load_config(os.path.join(ROOT, "configs", "vit_1_16.py"), "demo")
  # width 64: 1:128 along fc1's input axis (64) cannot form groups; "fc3" matches nothing.
  config.sparsity.rules = ((r"encoder/encoderblock_\d+/mlp/fc1/kernel", "1:128"),
                           (r"encoder/encoderblock_\d+/mlp/fc3/kernel", "1:4"),
                           (r".*/attn/query/kernel", "5:4"))
  with pytest.raises(ValueError) as info:
    train_and_evaluate(config, str(tmp_path / "w"))
  message = str(info.value)
  assert "need 1 <= N <= M, got 5:4" in message, message
  config.sparsity.rules = config.sparsity.rules[:2]
  with pytest.raises(ValueError) as info:
    train_and_evaluate(config, str(tmp_path / "w"))
  message = str(info.value)
  assert "divisible by 128" in message and "fc1/kernel" in message, message
  assert "'encoder/encoderblock_\\\\d+/mlp/fc3/kernel' matches no parameter" in message, message
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_missing_dataset_is_one_clear_message(tmp_path):
  from test_train_vit import load_config  # pylint: disable=import-outside-toplevel
  from pgf.train import train_and_evaluate
  config = load_config(os.path.join(ROOT, "configs", "vit_1_16.py"), "dataset=cifar10")
  config.data.data_dir = str(tmp_path / "no data here")
  config.batch_size = 7
  with pytest.raises(ValueError) as info:
    train_and_evaluate(config, str(tmp_path / "w"))
  message = str(info.value)
  assert "tfds build cifar10 --file_format=array_record" in message and ":demo" in message
  assert "config.batch_size=7" not in message  # 7 is fine on one device and one process


def test_t5_sigkill_then_rerun_is_bit_identical(tmp_path):
  _, summary = run_child(tmp_path / "t5 uninterrupted", spec=T5)
  assert summary["final_step"] == 16
  workdir = tmp_path / "t5 killed"
  run_child(workdir, spec=T5, expect_rc=-9, kill_at=7)
  assert 3 in checkpoint_steps(workdir) and max(checkpoint_steps(workdir)) <= 6
  _, summary = run_child(workdir, spec=T5)
  assert summary["resumed_from"] in (3, 6) and summary["final_step"] == 16
  assert_bit_identical(final_params(workdir), final_params(tmp_path / "t5 uninterrupted"))
