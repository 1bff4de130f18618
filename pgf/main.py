"""Entry point: `python -m pgf.main --config=configs/vit_1_16.py:demo --workdir=/tmp/run`.

Only flags and process setup live here; the work is `pgf.train.train_and_evaluate`.

Exit status (the same on every process of a multi-host job):

  0   training finished (or the workdir already held the final step);
  75  preempted (SIGTERM): every process saved a checkpoint at the same step; rerun the same
      command to resume (75 is EX_TEMPFAIL of sysexits.h: "try again later");
  1   an error: bad config, missing dataset or checkpoint, non-finite loss, any exception.
"""

import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

EXIT_FINISHED = 0
EXIT_ERROR = 1
PREEMPTED_EXIT_CODE = 75

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and summaries go; a rerun "
                    "with the same workdir resumes.")
flags.DEFINE_string("coordinator_address", None, "Multi-process jobs outside Cloud TPU VMs, "
                    "SLURM and Open MPI: host:port of process 0, the same on every process "
                    "(env PGF_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "Multi-process jobs: the number of processes "
                     "(env PGF_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "Multi-process jobs: this process's id, 0 to "
                     "num_processes - 1 (env PGF_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])


def exit_status(summary) -> int:
  """The process exit status of a `train_and_evaluate` summary (see the module docstring)."""
  return PREEMPTED_EXIT_CODE if summary.get("preempted") else EXIT_FINISHED


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from pgf import train  # pylint: disable=g-import-not-at-top
  from pgf.train import distributed  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  except ValueError as e:
    sys.exit(f"pgf: {e}")
  logging.getLogger().setLevel(logging.INFO)
  logging.info("JAX %s: %d process(es), %d device(s) %s", jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)
  try:
    summary = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, train.NonFiniteError) as e:
    logging.error("%s", e)
    sys.exit(f"pgf: {e}")  # status 1 (EXIT_ERROR)
  sys.exit(exit_status(summary))


if __name__ == "__main__":
  app.run(main)
