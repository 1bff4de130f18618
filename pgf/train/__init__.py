"""The trainer: one train loop for every model family, and what it is built from.

  loop.py           `train_and_evaluate(config, workdir)`: state building, step compilation,
                    the loop, evaluation (re-exported here: `pgf.train.train_and_evaluate`)
  config_lib.py     shared config fields, `validate`, `build_recipe`, `load`
  tasks.py          `Task` construction for a config (image classification)
  text_tasks.py     T5 text-to-text tasks; task_base.py: the `Task` dataclass
  sharding.py       device meshes and parameter sharding rules
  checkpointing.py  orbax checkpoints that survive preemption and torn writes
  multihost.py      agreement across processes; distributed.py: process setup
  metric_writer.py  metrics.jsonl and TensorBoard

`python -m pgf.main` is the command line. The loop's names are read from `pgf.train.loop` on
first use, so importing a building block (e.g. `pgf.train.config_lib` from a config file) does
not load the loop.
"""

_SUBMODULES = ("loop", "config_lib", "tasks", "text_tasks", "task_base", "sharding",
               "checkpointing", "multihost", "distributed", "metric_writer")


def __getattr__(name):
  if name.startswith("__") or name in _SUBMODULES:
    raise AttributeError(f"module 'pgf.train' has no attribute {name!r}")
  from pgf.train import loop  # pylint: disable=g-import-not-at-top
  return getattr(loop, name)
