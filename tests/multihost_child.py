"""One process of a multi-process training job for tests/test_multihost.py.

  PGF_COORDINATOR_ADDRESS=127.0.0.1:PORT PGF_NUM_PROCESSES=2 PGF_PROCESS_ID=0 \
      JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=4 python tests/multihost_child.py SPEC_JSON

The job runs exactly as `python -m pgf.main` runs it (`pgf.main.run`: process setup from the
environment, start-up checks, failure handling, exit status); without the coordinator variables
it is a single process. SPEC_JSON: {"config": "configs/vit_1_16.py:demo", "workdir": ...,
"overrides": {"a.b": value}} plus optional faults, each firing on the processes listed in
"fault_processes" (default: all):

  term_at        SIGTERM to this process when the loop fetches the batch of that step
  term_at_start  SIGTERM to this process before anything is compiled or restored
  kill_at        SIGKILL to this process at that point (no cleanup, like a lost VM)
  fail_at        a ValueError on this process at that point (-1: before anything is compiled)
  extra_vote     this process votes in an agreement the others do not hold, just before the
                 agreement on the checkpoint to restore (a process on another code path)
  term_in_eval   SIGTERM to this process while the evaluation after that step runs
  torn_view      this process reads the checkpoint of that step torn (a copy with truncated
                 files), as a host with a stale or failing view of the shared directory does,
                 after the other processes have read it intact
  process_overrides  {"1": {"a.b": value}}: config overrides for one process only
  code_edit      this process's pgf code fingerprint has one file changed

and "init_params_out": a path where process 0 writes the params that `config.init_from` gave.

On a normal return (finished or preempted) every process prints "SUMMARY {json}" as its last
line (with "process_index"), process 0 writes the final params, gathered from all processes, to
WORKDIR/final_params.npz, and the process exits with pgf's exit status (a failure in a
multi-process job exits from within `pgf.main.run`).
"""

import faulthandler
import json
import logging
import os
import shutil
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def gathered(tree) -> dict:
  """{leaf path: numpy array} of a pytree sharded over any processes (call on all of them)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from pgf.sparsify import leaf_path  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return {leaf_path(kp): np.asarray(x) for kp, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def cache_programs_on_every_process() -> None:
  """Lets every process write its compiled programs to the test's persistent cache.

  JAX writes entries from process 0 only, yet the key covers the process's own devices, so
  process 1 never finds one and would compile every program again in every job of the module.
  A harness shortcut only (pinned JAX internals; without them it does nothing): a cached
  executable is the compiled program itself."""
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  import inspect  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top
  try:
    from jax._src import compilation_cache, compiler  # pylint: disable=g-import-not-at-top
    params = list(inspect.signature(compiler._cache_write).parameters)  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    return
  if params != ["cache_key", "compile_time_secs", "module_name", "backend", "executable",
                "host_callbacks"] or not hasattr(compilation_cache, "put_executable_and_time"):
    return

  def cache_write(cache_key, compile_time_secs, module_name, backend, executable,
                  host_callbacks):
    if host_callbacks:
      return
    try:
      compilation_cache.put_executable_and_time(cache_key, module_name, executable, backend,
                                                int(compile_time_secs))
    except Exception as e:  # pylint: disable=broad-except
      warnings.warn(f"not cached: {module_name}: {e}")

  compiler._cache_write = cache_write  # pylint: disable=protected-access


def main():
  spec = json.loads(sys.argv[1])
  faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints where a hung process is
  logging.basicConfig(level=logging.INFO,
                      format="%(relativeCreated)6.0fms %(levelname)s %(message)s")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  cache_programs_on_every_process()
  from pgf import main as pgf_main  # pylint: disable=g-import-not-at-top
  from pgf.train import loop as train  # pylint: disable=g-import-not-at-top
  from pgf.train import config_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.load(os.path.join(ROOT, spec["config"]))
  config_lib.apply_overrides(config, spec.get("overrides", {}))
  own_id = os.environ.get("PGF_PROCESS_ID", "0")
  config_lib.apply_overrides(config, spec.get("process_overrides", {}).get(own_id, {}))
  faulty = lambda: jax.process_index() in spec.get("fault_processes",
                                                   range(jax.process_count()))

  if spec.get("code_edit") is not None:
    fingerprint = pgf_main.code_fingerprint

    def edited_fingerprint():
      hashes = fingerprint()
      if faulty():
        hashes[spec["code_edit"]] = "0123456789ab"
      return hashes

    pgf_main.code_fingerprint = edited_fingerprint

  build_task = train.build_task

  def build_task_with_faults(*args, **kwargs):
    task = build_task(*args, **kwargs)
    if faulty() and spec.get("term_at_start"):
      os.kill(os.getpid(), signal.SIGTERM)
    if faulty() and spec.get("fail_at") == -1:
      raise ValueError(f"injected failure on process {jax.process_index()} before compiling")
    train_batch, eval_batches = task.train_source.train_batch, task.eval_batches

    def faulty_train_batch(step):
      if faulty() and step == spec.get("kill_at"):
        os.kill(os.getpid(), signal.SIGKILL)
      if faulty() and step == spec.get("term_at"):
        os.kill(os.getpid(), signal.SIGTERM)
      if faulty() and step == spec.get("fail_at"):
        raise ValueError(f"injected failure on process {jax.process_index()} at step {step}")
      faulty_train_batch.last_step = step
      return train_batch(step)

    def faulty_eval_batches():
      # The loop evaluates after step `last_step + 1`; the signal lands mid-evaluation.
      for i, batch in enumerate(eval_batches()):
        if faulty() and i == 0 and faulty_train_batch.last_step + 1 == spec.get("term_in_eval"):
          os.kill(os.getpid(), signal.SIGTERM)
        yield batch

    faulty_train_batch.last_step = -1
    task.train_source.train_batch = faulty_train_batch
    task.eval_batches = faulty_eval_batches
    return task

  train.build_task = build_task_with_faults

  if spec.get("extra_vote"):
    from pgf.train import checkpointing, multihost  # pylint: disable=g-import-not-at-top
    restore_latest = checkpointing.Checkpointer.restore_latest

    def restore_latest_after_an_extra_vote(self, *args, **kwargs):
      if faulty():
        multihost.agree_max(1, "an extra vote of the test")
      return restore_latest(self, *args, **kwargs)

    checkpointing.Checkpointer.restore_latest = restore_latest_after_an_extra_vote

  if spec.get("torn_view") is not None:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    from etils import epath  # pylint: disable=g-import-not-at-top
    restore = ocp.StandardCheckpointHandler.restore
    step_dir = os.path.join(os.path.abspath(spec["workdir"]), "checkpoints", str(spec["torn_view"]))
    marker = lambda process: f"{spec['workdir']} step read by process {process}"

    def restore_with_torn_view(self, directory, *args, **kwargs):
      if os.path.dirname(str(directory)) != step_dir:  # not <torn step>/<item>
        return restore(self, directory, *args, **kwargs)
      if not faulty():
        restored = restore(self, directory, *args, **kwargs)
        open(marker(jax.process_index()), "w").close()
        return restored
      # The torn read fails only once the others have read the step intact, as a slow failing
      # read does; failing first, this process could move the step aside before they look.
      others = [p for p in range(jax.process_count())
                if p not in spec.get("fault_processes", range(jax.process_count()))]
      for _ in range(600):
        if all(os.path.exists(marker(p)) for p in others):
          break
        time.sleep(0.1)
      view = f"{spec['workdir']} torn view of process {jax.process_index()}"
      shutil.rmtree(view, ignore_errors=True)
      shutil.copytree(step_dir, view)
      for root, _, files in os.walk(view):
        for name in files:
          path = os.path.join(root, name)
          os.truncate(path, os.path.getsize(path) // 3)
      return restore(self, epath.Path(view) / os.path.basename(str(directory)), *args, **kwargs)

    ocp.StandardCheckpointHandler.restore = restore_with_torn_view

  if spec.get("init_params_out"):
    init_params_from = train._init_params_from  # pylint: disable=protected-access

    def recording_init_params_from(*args, **kwargs):
      state = init_params_from(*args, **kwargs)
      params = gathered(state["params"])
      if jax.process_index() == 0:
        np.savez(spec["init_params_out"], **params)
      return state

    train._init_params_from = recording_init_params_from  # pylint: disable=protected-access

  def after(summary):
    state = summary.pop("state", None)
    if state is not None:
      params = gathered(state["params"])
      if jax.process_index() == 0:
        np.savez(os.path.join(spec["workdir"], "final_params.npz"), **params)
    summary["process_index"] = jax.process_index()
    print("SUMMARY " + json.dumps(summary, default=str), flush=True)

  sys.exit(pgf_main.run(config, spec["workdir"], after=after))


if __name__ == "__main__":
  main()
