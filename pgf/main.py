"""Entry point: `python -m pgf.main --config=configs/vit_1_16.py:demo --workdir=/tmp/run`.

Only flags and process setup live here; the work is `pgf.train.train_and_evaluate`.
"""

import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and summaries go; a rerun "
                    "with the same workdir resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from pgf import distributed, train  # pylint: disable=g-import-not-at-top
  distributed.initialize()
  logging.getLogger().setLevel(logging.INFO)
  logging.info("JAX %s: %d process(es), %d device(s) %s", jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, train.NonFiniteError) as e:
    logging.error("%s", e)
    sys.exit(f"pgf: {e}")


if __name__ == "__main__":
  app.run(main)
