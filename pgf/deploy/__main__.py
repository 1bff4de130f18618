"""Command line of pgf.deploy.

  # Bytes dense vs compressed, per kernel and for the whole model (abstract params, no data):
  python -m pgf.deploy --config=configs/vit_1_16.py --report [--dtype=float32]
  # A training run's newest checkpoint as a deployable .safetensors file (its trained masks):
  python -m pgf.deploy --workdir=RUN --out=model.safetensors [--dtype=bfloat16] [--step=N]
  # Check a file: every tensor against its sha256 digest, every compressed kernel exactly N:M
  python -m pgf.deploy --verify=model.safetensors
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags, defined when it runs, not on import: importing this module
  next to pgf.main (which defines --config too) must not clash."""
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]) for --report.")
  flags.DEFINE_bool("report", False, "Print the memory report of --config.")
  flags.DEFINE_bool("per_kernel", True, "With --report: one row per compressed kernel.")
  flags.DEFINE_string("workdir", None, "Training workdir to export (recipe.json, checkpoints/).")
  flags.DEFINE_string("out", None, "Output .safetensors file for --workdir.")
  flags.DEFINE_integer("step", -1, "Checkpoint step to export (default: the newest).")
  flags.DEFINE_string("verify", None, "A .safetensors file to load and check.")
  flags.DEFINE_string("dtype", "", "Value dtype: bfloat16 or float32. Default: bfloat16 for "
                      "--report, the checkpoint's own (float32) for an export.")


def _report():
  from pgf.deploy import model  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  _, params, _ = model.abstract_model(config)
  report = model.size_report(params, model.config_recipe(config), FLAGS.dtype or "bfloat16")
  print(f"{config.model.name} {config.model.get('variant', '')}: {len(report['kernels'])} N:M "
        "kernels")
  print(model.format_report(report, FLAGS.per_kernel))


def _export():
  from pgf.deploy import model  # pylint: disable=g-import-not-at-top
  summary = model.export_checkpoint(FLAGS.workdir, FLAGS.out,
                                    FLAGS.step if FLAGS.step >= 0 else None, FLAGS.dtype or None)
  print(f"{summary['workdir']} step {summary['step']} -> {summary['out']} "
        f"({summary['file_bytes']:,} bytes)")
  print(f"{summary['kernels']} N:M kernels: {summary['sparsified_dense_bytes']:,} B dense -> "
        f"{summary['sparsified_compressed_bytes']:,} B; whole model "
        f"{summary['model_dense_bytes']:,} B -> {summary['model_compressed_bytes']:,} B")


def _verify():
  import jax  # pylint: disable=g-import-not-at-top
  from pgf import deploy  # pylint: disable=g-import-not-at-top
  header = deploy.read_header(FLAGS.verify)
  params = deploy.load(FLAGS.verify, as_jax=False)  # checks every digest and kernel
  leaves = jax.tree.leaves(params, is_leaf=deploy.is_compressed)
  kernels = [k for k in leaves if deploy.is_compressed(k)]
  digests = header.get("sha256")
  integrity = (f"{len(digests)} tensors match their sha256 digests" if digests is not None else
               f"no digests in this {header['format']} file: tensor bytes not checked (export "
               "it again to add them)")
  print(f"{FLAGS.verify}: {len(kernels)} N:M kernels verified, {len(leaves) - len(kernels)} "
        f"dense leaves; {integrity}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax / XLA chatter would bury the output
  modes = [FLAGS.report, FLAGS.workdir is not None, FLAGS.verify is not None]
  if sum(modes) != 1:
    raise app.UsageError("give exactly one of --report (with --config), --workdir (with --out) "
                         "or --verify")
  try:
    if FLAGS.report:
      if FLAGS.config is None:
        raise ValueError("--report needs --config")
      _report()
    elif FLAGS.workdir is not None:
      if not FLAGS.out:
        raise ValueError("--workdir needs --out")
      _export()
    else:
      _verify()
  except ValueError as e:
    sys.exit(f"pgf.deploy: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
