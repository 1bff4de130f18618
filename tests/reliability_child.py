"""A training process for the reliability tests, with faults injected at exact steps.

  python tests/reliability_child.py SPEC_JSON

SPEC_JSON: {"config": "configs/vit_1_16.py:demo", "workdir": ..., "overrides": {"a.b": value},
"kill_at": step, "term_at": step, "nan_at": step}. The faults fire when the loop asks for the
batch of that step, i.e. after every earlier step ran:

  kill_at   SIGKILL to this process (no cleanup at all, like a lost VM)
  term_at   SIGTERM to this process (what a preemption notice sends)
  nan_at    the batch's float inputs become NaN (a divergence at that step)

On a normal return the final params are written to WORKDIR/final_params.npz, the summary
(without the state) to stdout as the last line, prefixed "SUMMARY ", and the process exits with
pgf's exit status (`pgf.main.exit_status`: 0 finished, 75 preempted).
"""

import json
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
  spec = json.loads(sys.argv[1])
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from pgf import main as pgf_main  # pylint: disable=g-import-not-at-top
  from pgf.train import loop as train  # pylint: disable=g-import-not-at-top
  from pgf.train import config_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.load(os.path.join(ROOT, spec["config"]))
  config_lib.apply_overrides(config, spec.get("overrides", {}))

  build_task = train.build_task

  def build_task_with_faults(*args, **kwargs):
    task = build_task(*args, **kwargs)
    train_batch = task.train_source.train_batch

    def faulty_train_batch(step):
      if step == spec.get("kill_at"):
        os.kill(os.getpid(), signal.SIGKILL)
      if step == spec.get("term_at"):
        os.kill(os.getpid(), signal.SIGTERM)
      batch = train_batch(step)
      if step == spec.get("nan_at"):
        # Images travel as uint8, which has no NaN: a float batch of NaNs takes their place
        # (the task normalises only uint8; a float image goes to the model as it is).
        batch = {k: np.full(v.shape, np.nan, np.float32) if k == "image" or v.dtype.kind == "f"
                 else v for k, v in batch.items()}
      return batch

    task.train_source.train_batch = faulty_train_batch
    return task

  train.build_task = build_task_with_faults
  try:
    summary = train.train_and_evaluate(config, spec["workdir"])
  except (ValueError, train.NonFiniteError) as e:
    print(f"ERROR {type(e).__name__}: {e}", flush=True)
    sys.exit(3)
  state = summary.pop("state", None)
  if state is not None:
    flat = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(state["params"])[0]}
    np.savez(os.path.join(spec["workdir"], "final_params.npz"), **flat)
  print("SUMMARY " + json.dumps(summary, default=str), flush=True)
  sys.exit(pgf_main.exit_status(summary))


if __name__ == "__main__":
  main()
