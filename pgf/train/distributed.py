"""Multi-host setup with JAX's own machinery (no launcher of our own).

`jax.distributed.initialize` is called when the job has several processes:

  * explicitly, on any cluster: the coordinator address (host:port of process 0), the number
    of processes and this process's id, from the flags `--coordinator_address`,
    `--num_processes`, `--process_id` or else the environment variables
    `PGF_COORDINATOR_ADDRESS`, `PGF_NUM_PROCESSES`, `PGF_PROCESS_ID` (`JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` are read too);
  * automatically on a multi-host Cloud TPU VM slice, in a SLURM `srun` task, under Open MPI,
    or wherever `PGF_DISTRIBUTED=1` is set: JAX detects the three values itself.

Otherwise the run is one process and nothing is called. On CPU, cross-process collectives use
gloo (JAX's default), so the same code runs as several local processes for testing.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import sys
import threading
import time
from typing import Mapping

# Each setting: (PGF's variable, JAX's variable). JAX itself reads only the address.
ENV_VARS = {
    "coordinator_address": ("PGF_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("PGF_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("PGF_PROCESS_ID", "JAX_PROCESS_ID"),
}
FLAGS_OF = {"coordinator_address": "--coordinator_address", "num_processes": "--num_processes",
            "process_id": "--process_id"}


def detected_cluster(environ: Mapping[str, str]) -> str | None:
  """The kind of multi-process environment JAX can configure itself from, if any."""
  if environ.get("TPU_WORKER_HOSTNAMES", "").count(","):
    return "Cloud TPU VM slice"
  if "SLURM_JOB_ID" in environ and "SLURM_STEP_NODELIST" in environ:  # a task of `srun`
    return "SLURM"
  if "OMPI_COMM_WORLD_SIZE" in environ:
    return "Open MPI"
  return None


def _int_setting(name: str, value, source: str) -> int:
  try:
    number = int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{source}={value!r}: {name} must be an integer") from None
  if number < 0:
    raise ValueError(f"{source}={value!r}: {name} must be >= 0")
  return number


def plan(environ: Mapping[str, str], coordinator_address: str | None = None,
         num_processes: int | None = None, process_id: int | None = None) -> dict | None:
  """The keyword arguments of `jax.distributed.initialize` for this process, or None when the
  job is a single process. Flags (the arguments) take precedence over the environment.

  Raises ValueError naming the missing or malformed setting when the explicit settings are
  incomplete and no cluster environment can supply the rest.
  """
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  sources = {name: FLAGS_OF[name] for name, value in given.items() if value is not None}
  for name, value in given.items():
    for var in ENV_VARS[name]:
      if value is None and environ.get(var, "") != "":
        value, sources[name] = environ[var], var
    given[name] = value
  for name in ("num_processes", "process_id"):
    if given[name] is not None:
      given[name] = _int_setting(name, given[name], sources[name])
  if given["num_processes"] is not None and given["num_processes"] < 1:
    raise ValueError(f"{sources['num_processes']}=0: num_processes must be >= 1")
  if (given["process_id"] is not None and given["num_processes"] is not None
      and given["process_id"] >= given["num_processes"]):
    raise ValueError(f"{sources['process_id']}={given['process_id']} is not below "
                     f"{sources['num_processes']}={given['num_processes']} (ids count from 0)")
  cluster = detected_cluster(environ)
  if any(value is not None for value in given.values()):
    missing = [name for name, value in given.items() if value is None]
    if missing and cluster is None:
      what = ", ".join(f"{FLAGS_OF[n]} (or {ENV_VARS[n][0]})" for n in missing)
      raise ValueError(f"multi-process setup: {', '.join(sorted(sources.values()))} given "
                       f"but not {what}; outside SLURM, Open MPI and Cloud TPU VMs all three "
                       "of the coordinator address, the number of processes and the process "
                       "id are needed")
    return given  # None values are left to JAX's cluster detection
  if cluster is not None or environ.get("PGF_DISTRIBUTED") == "1":
    return {}
  return None


DEFAULT_STARTUP_TIMEOUT = 60  # seconds; --startup_timeout

# What `_on_coordination_error` needs: the settings, whether the job had assembled, and the
# handler pgf.main installs (error text, connected) -> never returns. It runs when the job
# has not assembled within the start-up timeout.
_STATE: dict = {"kwargs": {}, "timeout": DEFAULT_STARTUP_TIMEOUT, "connected": False,
                "handler": None}


def set_error_handler(handler) -> None:
  """`handler(message: str, connected: bool)` ends the process on a fatal coordination error
  (it runs on one of JAX's threads): `connected` is False while the job assembles."""
  _STATE["handler"] = handler


def _on_coordination_error(*args) -> None:
  text = " ".join(str(a) for a in args) or "coordination service error"
  if not _STATE["connected"]:
    text = diagnose(_STATE["kwargs"], RuntimeError(text), _STATE["timeout"])
  handler = _STATE["handler"]
  if handler is not None:
    handler(text, _STATE["connected"])
  logging.error("pgf: %s", text)
  print(f"pgf: {text}", file=sys.stderr, flush=True)
  os._exit(1)  # pylint: disable=protected-access


class StartupError(RuntimeError):
  """The processes did not all connect within the start-up timeout."""


def _reachable(address: str, timeout_s: float = 2.0) -> bool:
  """Whether something accepts TCP connections at host:port."""
  import socket  # pylint: disable=g-import-not-at-top
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
      return True
  except (OSError, ValueError):
    return False


def diagnose(kwargs: Mapping, error: Exception, timeout_s: float) -> str:
  """What a failed connect most likely means, naming the setting to check."""
  address = kwargs.get("coordinator_address") or "(detected by JAX)"
  count, me = kwargs.get("num_processes"), kwargs.get("process_id")
  text = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
  who = f"process {me}" if me is not None else "this process"
  settings = ("--coordinator_address (or PGF_COORDINATOR_ADDRESS), --num_processes, "
              "--process_id")
  if "already" in text.lower() and "regist" in text.lower() or "duplicate" in text.lower():
    likely = (f"another process registered with the same --process_id={me}: every process "
              f"needs its own id, 0 to {count - 1 if count else 'N-1'}")
  elif me == 0:
    likely = (f"not all {count if count else 'N'} processes connected to this one (the "
              f"coordinator, {address}) within {timeout_s:.0f} s: a process was not started "
              "or crashed, uses another --coordinator_address or port, shares a "
              "--process_id with another, or was given another --num_processes")
  elif kwargs.get("coordinator_address") and not _reachable(kwargs["coordinator_address"]):
    likely = (f"nothing accepts connections at --coordinator_address={address}: process 0 "
              "was not started (or has exited), or the address or port is not process 0's "
              "(it must be the same on every process)")
  else:
    likely = (f"the coordinator at {address} answers, but the job did not assemble within "
              f"{timeout_s:.0f} s: a process was not started, two share a --process_id, or "
              "--num_processes differs between processes")
  return (f"{who} could not join the job within the start-up timeout ({timeout_s:.0f} s, "
          f"--startup_timeout): {likely}. Check {settings}. (JAX: {text})")


def _who(kwargs: Mapping) -> str:
  return (f"process {kwargs.get('process_id', '?')} of {kwargs.get('num_processes', '?')}, "
          f"coordinator {kwargs.get('coordinator_address') or '(detected by JAX)'}")


def _check_joined(kwargs: Mapping, count: int, timeout_s: float) -> None:
  """Every process says it joined, under its id, in the key-value store, and waits for all:
  a process id taken twice or a process missing is an error here, with a message."""
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  state = jax_distributed.global_state
  client, me = state.client, state.process_id
  try:
    client.key_value_set(f"pgf/joined/{me}", "1")
  except Exception as e:  # pylint: disable=broad-except
    if "exist" in str(e).lower():
      raise StartupError(
          f"two processes were started with --process_id={me} (or PGF_PROCESS_ID): every "
          f"process needs its own id, 0 to {count - 1}") from e
    raise
  deadline = time.monotonic() + timeout_s
  for p in range(count):
    while True:
      try:
        client.blocking_key_value_get(f"pgf/joined/{p}", 250)
        break
      except Exception as e:  # pylint: disable=broad-except
        failure = None
        try:  # a process that failed while joining says why (pgf.multihost.publish_failure)
          failure = json.loads(client.key_value_try_get("pgf/failure"))
        except Exception:  # pylint: disable=broad-except
          pass
        if failure is not None:
          raise StartupError(f"process {failure['process']} failed while the job started: "
                             f"{failure['message']}") from e
        if time.monotonic() > deadline:
          raise StartupError(diagnose(kwargs, RuntimeError(f"process {p} did not join"),
                                      _STATE["timeout"])) from e


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, environ: Mapping[str, str] | None = None,
               startup_timeout: float = DEFAULT_STARTUP_TIMEOUT) -> dict | None:
  """Calls `jax.distributed.initialize` with the settings of `plan` and returns them; does
  nothing (returns None) in a single-process job. Must run before anything else touches JAX's
  devices.

  Every process must connect within `startup_timeout` seconds or this raises StartupError
  saying which setting is likely wrong. JAX's own SIGTERM handler (its preemption service) is
  not installed: pgf handles SIGTERM itself, from before this call (see pgf.main).
  """
  import jax  # pylint: disable=g-import-not-at-top
  environ = os.environ if environ is None else environ
  kwargs = plan(environ, coordinator_address, num_processes, process_id)
  if kwargs is None:
    return None
  if not startup_timeout or startup_timeout <= 0:
    raise ValueError(f"--startup_timeout={startup_timeout}: must be > 0 seconds")
  jax.config.update("jax_enable_preemption_service", False)
  _STATE.update(kwargs=kwargs, timeout=startup_timeout, connected=False)
  # JAX's own connect timeout aborts the process (SIGABRT, 134) with a generic
  # DEADLINE_EXCEEDED, and does not end every failed start (a duplicate process id can wait
  # forever): this timer fires first and ends the start-up with a message naming the likely
  # wrong setting. (JAX's error callback cannot be replaced from Python: it receives a C++
  # status that does not convert.)
  timer = threading.Timer(startup_timeout, _on_coordination_error,
                          args=(f"the job did not assemble within {startup_timeout:.0f} s",))
  timer.daemon = True
  timer.start()
  # A process can also block in JAX's connect holding Python's lock, where no Python thread
  # runs (seen with a duplicate process id): faulthandler's C thread then ends it (status 1,
  # after printing where it was), and the line below says what that means.
  print(f"pgf: connecting to the job ({_who(kwargs)}); if it does not assemble within "
        f"{startup_timeout + 10:.0f} s this process exits with status 1: check "
        "--coordinator_address, --num_processes and --process_id on every process",
        file=sys.stderr, flush=True)
  faulthandler.dump_traceback_later(startup_timeout + 10.0, exit=True)
  start = time.monotonic()
  try:
    jax.distributed.initialize(**kwargs,
                               initialization_timeout=max(int(startup_timeout), 1) + 30)
    process_count = jax.process_count()  # the devices of every process: a collective start-up
    if kwargs.get("num_processes") is not None and process_count != kwargs["num_processes"]:
      raise StartupError(
          f"--num_processes={kwargs['num_processes']} on process {jax.process_index()}, but "
          f"the job has {process_count} processes (process 0's --num_processes): give every "
          "process the same --num_processes")
    _check_joined(kwargs, process_count,
                  max(startup_timeout - (time.monotonic() - start), 1.0))
  except StartupError:
    raise
  except ValueError as e:
    raise ValueError(
        f"jax.distributed.initialize: {str(e).rstrip('.')}. Outside a Cloud TPU VM slice, "
        "SLURM or Open MPI, pass --coordinator_address=HOST:PORT (process 0's host), "
        "--num_processes and --process_id, or set PGF_COORDINATOR_ADDRESS, PGF_NUM_PROCESSES "
        "and PGF_PROCESS_ID") from e
  except Exception as e:  # pylint: disable=broad-except  (JaxRuntimeError: DEADLINE_EXCEEDED...)
    raise StartupError(diagnose(kwargs, e, startup_timeout)) from e
  finally:
    timer.cancel()
    faulthandler.cancel_dump_traceback_later()
  _STATE["connected"] = True
  logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
  return kwargs
