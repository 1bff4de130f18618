"""Entry point: `python -m pgf.main --config=configs/vit_1_16.py:demo --workdir=/tmp/run`.

Only flags, process setup and the exit status live here; the work is
`pgf.train.train_and_evaluate`, called by `run`.

Exit status (docs/scaling.md has the operator's table):

  0   training finished (or the workdir already held the final step);
  75  preempted (SIGTERM), on every process: all saved a checkpoint at the same step (or, if
      the signal came before training started, nothing new needed saving); rerun the same
      command to resume (75 is EX_TEMPFAIL of sysexits.h: "try again later");
  69  a peer process vanished (killed, its host lost) without reporting an error: the
      survivors exit within seconds; nothing after the newest complete checkpoint was saved,
      and rerunning the same command resumes there exactly (69 is EX_UNAVAILABLE);
  134 (SIGABRT, from JAX) process 0 vanished and, with it, the coordination service: JAX's
      client may end the survivors itself before pgf sees the failed collective (treat as 69);
  1   an error on any process -- bad config or command line, processes that disagree (config,
      code, --num_processes), a start-up that did not assemble within --startup_timeout,
      missing dataset or checkpoint, non-finite loss, any exception -- on every process, each
      printing the failing process's message.
"""

import logging
import os
import signal
import sys
import traceback

from absl import app
from absl import flags
from ml_collections import config_flags

EXIT_FINISHED = 0
EXIT_ERROR = 1
EXIT_PEER_LOST = 69
PREEMPTED_EXIT_CODE = 75

log = logging.getLogger(__name__)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and summaries go; a rerun "
                    "with the same workdir resumes.")
flags.DEFINE_string("coordinator_address", None, "Multi-process jobs outside Cloud TPU VMs, "
                    "SLURM and Open MPI: host:port of process 0, the same on every process "
                    "(env PGF_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "Multi-process jobs: the number of processes, "
                     "the same on every process (env PGF_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "Multi-process jobs: this process's id, 0 to "
                     "num_processes - 1 (env PGF_PROCESS_ID).")
flags.DEFINE_float("startup_timeout", 60.0, "Multi-process jobs: seconds every process waits "
                   "for all the others to connect before it exits (status 1) with a message "
                   "naming the likely wrong setting (env PGF_STARTUP_TIMEOUT).")


def exit_status(summary) -> int:
  """The process exit status of a `train_and_evaluate` summary (see the module docstring)."""
  return PREEMPTED_EXIT_CODE if summary.get("preempted") else EXIT_FINISHED


def code_fingerprint() -> dict[str, str]:
  """{path: short sha1} of every Python file of the pgf package: what a process runs."""
  import hashlib  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.abspath(__file__))
  hashes = {}
  for directory, subdirectories, files in os.walk(root):
    subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
          hashes[os.path.relpath(path, os.path.dirname(root))] = hashlib.sha1(
              f.read()).hexdigest()[:12]
  return hashes


def _flush_logs() -> None:
  for handler in logging.getLogger().handlers + [logging.getLogger("absl").handlers and
                                                 logging.getLogger("absl").handlers[0]]:
    if handler:
      try:
        handler.flush()
      except Exception:  # pylint: disable=broad-except
        pass
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # pylint: disable=broad-except
      pass


def _exit_now(status: int, wait_s: float = 5.0) -> None:
  """Ends this process of a multi-process job at once. A normal exit would run
  jax.distributed.shutdown, which waits for every process -- minutes when one is gone."""
  from pgf.train import multihost  # pylint: disable=g-import-not-at-top
  _flush_logs()
  multihost.before_exit(wait_s)
  _flush_logs()
  os._exit(status)  # pylint: disable=protected-access


def _report(message: str) -> None:
  log.error("%s", message)
  print(f"pgf: {message}", file=sys.stderr, flush=True)


def _looks_like_lost_peer(error: BaseException) -> bool:
  """Whether an exception says a collective or the coordination service lost a process. JAX
  raises these as different types (a RuntimeError, or a ValueError from a transfer), so the
  text decides."""
  text = f"{type(error).__name__}: {error}".lower()
  return any(marker in text for marker in (
      "gloo", "nccl", "connection closed", "connection reset", "connection refused",
      "socket closed", "broken pipe", "unavailable:", "failed to send rpc", "heartbeat"))


def run(config, workdir: str, coordinator_address: str | None = None,
        num_processes: int | None = None, process_id: int | None = None,
        startup_timeout: float | None = None, after=None) -> int:
  """Sets up the processes, trains, and returns the exit status (see the module docstring).

  In a multi-process job a failure does not return: every process exits at once
  (`os._exit`) with the failing process's message, because waiting for the job's orderly
  shutdown would hang on a process that is gone. `after(summary)` runs on every process after
  a successful `train_and_evaluate` (tests gather results there).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from pgf import train  # pylint: disable=g-import-not-at-top
  from pgf.train import distributed, multihost  # pylint: disable=g-import-not-at-top
  if startup_timeout is None:
    startup_timeout = float(os.environ.get("PGF_STARTUP_TIMEOUT") or
                            distributed.DEFAULT_STARTUP_TIMEOUT)

  # SIGTERM is caught from here on: while connecting (where it used to kill this process with
  # 143 and leave the others waiting for it) and while training (pgf.train carries it).
  stop = {"signal": None}

  def on_sigterm(signum, _frame):
    stop["signal"] = signum

  previous_handler = signal.signal(signal.SIGTERM, on_sigterm)

  def on_coordination_error(message: str, connected: bool):
    # Runs on a timer thread when the job did not assemble within the start-up timeout.
    del connected
    _report(message)
    _flush_logs()
    os._exit(PREEMPTED_EXIT_CODE if stop["signal"] is not None else EXIT_ERROR)

  distributed.set_error_handler(on_coordination_error)
  try:
    try:
      multi = distributed.initialize(coordinator_address, num_processes, process_id,
                                     startup_timeout=startup_timeout) is not None
    except (ValueError, distributed.StartupError) as e:
      status = PREEMPTED_EXIT_CODE if stop["signal"] is not None else EXIT_ERROR
      _report(str(e))
      if multihost.connected():  # connected, but wrong (--num_processes): tell the others
        multihost.publish_failure(status, str(e))
        multihost.wait_for_acknowledgements(timeout_s=10.0)
        _exit_now(status)
      return status  # told to stop while still connecting: nothing to save, so 75
    multi = multi and jax.process_count() > 1
    logging.getLogger().setLevel(logging.INFO)
    log.info("JAX %s: %d process(es), %d device(s) %s", jax.__version__, jax.process_count(),
             jax.device_count(), jax.devices()[0].platform)
    if not multi:
      return _train(config, workdir, stop, after)

    def on_peer_failure(failure):
      multihost.acknowledge_failure()
      _report(f"process {failure['process']} failed (exit status {failure['status']}): "
              f"{failure['message']}")
      _exit_now(failure["status"])

    multihost.watch_failures(on_peer_failure)
    try:
      same_run_check = True
      multihost.check_same_run(
          {"config": config.to_dict(), "code": code_fingerprint(),
           "settings": {"jax": jax.__version__, "workdir": os.path.abspath(workdir),
                        "process_count": jax.process_count()}},
          startup_timeout)
      same_run_check = False
      if multihost.agree_max(stop["signal"] is not None, "preempted while starting"):
        log.warning("Received SIGTERM%s before training started; stopping with nothing to "
                    "save. Rerun the same command to start (or resume).",
                    "" if stop["signal"] else " on another process")
        status = PREEMPTED_EXIT_CODE
      else:
        status = _train(config, workdir, stop, after, reraise=True)
      multihost.stop_watching()  # a normal exit: JAX's shutdown waits for every process
      return status
    except BaseException as e:  # pylint: disable=broad-except
      if isinstance(e, SystemExit):
        raise
      status = EXIT_ERROR
      message = _message(e, train)
      log.error("process %d: %s", jax.process_index(), message)  # its own view, first
      if same_run_check and isinstance(e, multihost.MultihostError):
        _report(message)  # every process found the same differences: no need to relay them
        _exit_now(EXIT_ERROR)
      lost = _looks_like_lost_peer(e)
      peer = multihost.peer_failure(timeout_s=0.3 if lost else 0.0)
      if peer is not None:  # another process failed first: its failure is the cause
        multihost.acknowledge_failure()
        _report(f"process {peer['process']} failed (exit status {peer['status']}): "
                f"{peer['message']}")
        _exit_now(peer["status"])
      if lost:
        status = EXIT_PEER_LOST
        message = (f"lost contact with another process ({message}); it was killed or its "
                   "host is gone. Nothing after the newest complete checkpoint was saved; "
                   "rerun the same command (all processes) to resume from it")
      first = multihost.publish_failure(status, f"{message}")
      if first["process"] != jax.process_index():
        multihost.acknowledge_failure()
        _report(f"process {first['process']} failed (exit status {first['status']}): "
                f"{first['message']}")
        _exit_now(first["status"])
      _report(f"process {jax.process_index()}: {message}")
      # A lost process never acknowledges: wait briefly then.
      multihost.wait_for_acknowledgements(timeout_s=1.0 if lost else 10.0)
      _exit_now(status, wait_s=1.0 if lost else 5.0)
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
  raise AssertionError("unreachable")


def _message(error: BaseException, train) -> str:
  if isinstance(error, (ValueError, FileNotFoundError, train.NonFiniteError)):
    return str(error)
  from pgf.train import multihost  # pylint: disable=g-import-not-at-top
  if isinstance(error, multihost.MultihostError):
    return str(error)
  log.error("%s", "".join(traceback.format_exception(error)))
  return f"{type(error).__name__}: {str(error).splitlines()[0][:500] if str(error) else ''}"


def _train(config, workdir, stop, after, reraise: bool = False) -> int:
  from pgf import train  # pylint: disable=g-import-not-at-top
  from pgf.train import multihost  # pylint: disable=g-import-not-at-top
  try:
    summary = train.train_and_evaluate(config, workdir, stop=stop)
    if after is not None:
      after(summary)
  except (ValueError, FileNotFoundError, train.NonFiniteError, multihost.MultihostError) as e:
    if reraise:
      raise
    _report(str(e))
    return EXIT_ERROR
  return exit_status(summary)


def main(argv):
  del argv
  sys.exit(run(FLAGS.config, FLAGS.workdir, FLAGS.coordinator_address, FLAGS.num_processes,
               FLAGS.process_id, FLAGS.startup_timeout
               if FLAGS["startup_timeout"].present else None))


if __name__ == "__main__":
  app.run(main)
