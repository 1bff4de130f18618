"""Multi-host setup with JAX's own machinery (no launcher of our own)."""

import logging
import os


def initialize() -> None:
  """Calls `jax.distributed.initialize()` on multi-host TPU VMs / clusters; skipped cleanly on
  one host. Cloud TPU VMs and SLURM/Open MPI are auto-detected by JAX; set
  PGF_DISTRIBUTED=1 to force it elsewhere (with JAX's coordinator environment variables)."""
  import jax  # pylint: disable=g-import-not-at-top
  forced = os.environ.get("PGF_DISTRIBUTED") == "1"
  on_tpu_pod = bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))
  cluster = any(k in os.environ for k in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE"))
  if not (forced or on_tpu_pod or cluster):
    return
  jax.distributed.initialize()
  logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
