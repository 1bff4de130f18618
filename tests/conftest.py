"""Test setup: one CPU device for the main suite (the 8-device tests run in a subprocess).

A persistent JAX compilation cache, empty at the start of every pytest run and removed at its
end, is shared by the run's tests and the subprocesses they start: many tests compile the same
tiny programs (a demo's train step in a process and again in its rerun), and XLA's compile
time is most of their cost. A cached executable is the compiled binary itself, so results are
unchanged. Set JAX_COMPILATION_CACHE_DIR yourself to use (and keep) another directory.

XLA:CPU compiles the suite's programs with LLVM at optimisation level 1 (XLA_FLAGS, inherited
by subprocesses): the programs are tiny, so compiling them is most of the suite's time, and
level 1 compiles about 30% faster than the default. Every comparison in the suite runs both
sides under the same flags. (On a tiny ViT demo run, level 1 gives bit-identical parameters to
the default; evaluation sums may differ in the 7th digit.)
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

CPU_OPT_LEVEL = "--xla_backend_optimization_level"
if CPU_OPT_LEVEL not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_OPT_LEVEL}=1".strip()

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  # Set in the pytest process before xdist starts its workers, which inherit it.
  _CACHE = tempfile.mkdtemp(prefix="pgf-tests-jax-cache-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
