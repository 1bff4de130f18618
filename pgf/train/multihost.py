"""Decisions every process must take together, agreed by one all-reduce of a small int.

In a multi-process job (one process per TPU host or GPU node) every process runs the same
program, and any decision that changes which collectives run next -- stop for preemption,
which checkpoint step to restore, whether a restore worked -- must be the same on every
process, or one of them waits forever in a collective the others never enter. Each process
contributes its local view (an int or a bool) and all of them get the max (or min) over
processes, so they take the same decision.

The reduction is a tiny jitted computation over a mesh of one device per process (the first
local device of each), so it rides on the same collectives as training: ICI/DCN on TPU, NCCL
on GPU, gloo on CPU. It can be started without waiting (`start_max`), which lets the train
loop vote every step without stalling its asynchronous dispatch: the vote is read one step
later, while the device is busy with the next step. In one process nothing is computed; the
local value is the answer.

Every agreement is named after what it decides (and, where there is one, the step it is about),
and the name travels with the vote: if a process's vote meets another process's vote on
something else -- the processes took different code paths, which used to pair e.g. a restore
check with a stop vote and go on with a wrong answer -- every process raises `MultihostError`
naming both.

The rest of the module uses JAX's coordination service (its key-value store, reached over the
network, not the devices): `check_same_run` compares what each process runs with process 0's
before anything is compiled, and `publish_failure` / `watch_failures` carry a failure on one
process to all the others, however they are blocked (in a collective, a barrier, a save).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import zlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

_AXIS = "processes"

log = logging.getLogger(__name__)


class MultihostError(RuntimeError):
  """The processes of a job disagree (config, code, an agreement's subject) or lost a peer."""


def is_main() -> bool:
  """True on the process that writes logs, metrics and other single-copy files."""
  return jax.process_index() == 0


@functools.cache
def _process_mesh() -> jax.sharding.Mesh:
  """A 1-d mesh of the first device of every process, in process order."""
  first: dict[int, jax.Device] = {}
  for device in sorted(jax.devices(), key=lambda d: d.id):
    first.setdefault(device.process_index, device)
  return jax.sharding.Mesh(np.array([first[p] for p in range(jax.process_count())]), (_AXIS,))


@functools.cache
def _reduce():
  mesh = _process_mesh()
  return jax.jit(lambda votes: jnp.max(votes, axis=0),
                 out_shardings=NamedSharding(mesh, PartitionSpec()))


_NAMES: dict[int, str] = {}  # name ids seen on this process -> names, for error messages


def _name_id(name: str) -> int:
  number = zlib.crc32(name.encode()) & 0x3FFFFFFF
  _NAMES.setdefault(number, name)
  return number


# The agreements pgf holds, known up front so that a mispaired vote is named on both sides.
for _name in ("stop after this step", "checkpoint already saved", "newest checkpoint to restore",
              "checkpoint restored everywhere", "newest init_from checkpoint",
              "init_from params read everywhere", "preempted while starting"):
  _name_id(_name)


def _describe(name: str, detail: int) -> str:
  return f"{name!r} (step {detail})" if detail >= 0 else repr(name)


class Agreement:
  """The result of an all-reduce that may still be running; `result()` waits for it."""

  def __init__(self, value, op: str = "max", name: str = "", detail: int = -1):
    self._value, self._op, self._name, self._detail = value, op, name, detail

  def result(self) -> int:
    value = self._value
    if not isinstance(value, jax.Array):  # one process: the local value
      return int(value)
    # Replicated: this process holds a full copy of [value, id, -id, detail, -detail] maxed
    # over processes; the max and min of the id (and detail) differ iff some process voted
    # on something else.
    row = np.asarray(value.addressable_data(0))
    if row[1] != -row[2] or row[3] != -row[4]:
      mine = _name_id(self._name)
      other_id = int(row[1]) if row[1] != mine else int(-row[2])
      other_detail = int(row[3]) if row[3] != self._detail else int(-row[4])
      other = _NAMES.get(other_id, f"an agreement unknown here (id {other_id})")
      raise MultihostError(
          f"process {jax.process_index()}'s vote on {_describe(self._name, self._detail)} "
          f"was paired with another process's vote on {_describe(other, other_detail)}: the "
          "processes took different paths through the program (different configs, code or "
          "files?); nothing decided by this vote was used")
    return int(row[0]) if self._op == "max" else -int(row[0])


def _start(op: str, value: int | bool, name: str, detail: int) -> Agreement:
  local = int(value)
  if jax.process_count() == 1:
    return Agreement(local, op, name, detail)
  mesh = _process_mesh()
  number = _name_id(name)
  row = [local if op == "max" else -local, number, -number, int(detail), -int(detail)]
  votes = jax.make_array_from_process_local_data(
      NamedSharding(mesh, PartitionSpec(_AXIS)), np.asarray([row], np.int32),
      (jax.process_count(), len(row)))
  return Agreement(_reduce()(votes), op, name, detail)


def start_max(value: int | bool, name: str, detail: int = -1) -> Agreement:
  """Starts agreeing on the max of `value` over processes (e.g. "has anyone been told to
  stop?"); every process must call it at the same point of the program, with the same `name`
  (what is decided) and `detail` (e.g. the step it is about, or -1)."""
  return _start("max", value, name, detail)


def agree_max(value: int | bool, name: str, detail: int = -1) -> int:
  """The max of `value` over all processes (any process's True makes it True)."""
  return _start("max", value, name, detail).result()


def agree_min(value: int | bool, name: str, detail: int = -1) -> int:
  """The min of `value` over all processes (True only where every process says True)."""
  return _start("min", value, name, detail).result()


# ----------------------------------------------------------------------------- the key-value store
def _client():
  """JAX's coordination-service client, or None in a single-process job."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


def connected() -> bool:
  """Whether this process is connected to a multi-process job's coordination service."""
  return _client() is not None


def _bounded(fn: Callable[[], Any], timeout_s: float, default=None):
  """fn() run in a helper thread, or `default` if it raises or takes longer than timeout_s (a
  call to a coordination service that died with its process may not return by itself)."""
  box = {"value": default}

  def call():
    try:
      box["value"] = fn()
    except Exception:  # pylint: disable=broad-except
      pass

  thread = threading.Thread(target=call, daemon=True)
  thread.start()
  thread.join(timeout_s)
  return box["value"]


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = json.dumps(value, sort_keys=True, default=repr)
  return flat


def check_same_run(fields: Mapping[str, Any], timeout_s: float) -> None:
  """Raises MultihostError, on every process, if any process's `fields` differ from process 0's.

  `fields` is a nested dict of what must be the same everywhere (the config, the code's file
  hashes, the settings on the command line). Each process publishes its own and reads all of
  them, so all compute the same verdict and message without a device collective (a differing
  mesh or step count would make that collective itself hang).
  """
  client = _client()
  if client is None or jax.process_count() == 1:
    return
  me, count = jax.process_index(), jax.process_count()
  client.key_value_set(f"pgf/run/{me}", json.dumps(_flatten(fields), sort_keys=True))
  runs = {}
  for p in range(count):
    try:
      runs[p] = json.loads(client.blocking_key_value_get(f"pgf/run/{p}", int(timeout_s * 1000)))
    except Exception as e:  # pylint: disable=broad-except
      raise MultihostError(f"process {p} did not publish its config within {timeout_s:.0f} s "
                           f"of start-up ({type(e).__name__}); is it still running?") from e
  problems = []
  for p in range(1, count):
    differing = sorted(k for k in runs[0].keys() | runs[p].keys()
                       if runs[0].get(k) != runs[p].get(k))
    if differing:
      shown = [f"{k} = {runs[p].get(k, '(absent)')} (process 0: {runs[0].get(k, '(absent)')})"
               for k in differing[:12]]
      more = f" and {len(differing) - 12} more" if len(differing) > 12 else ""
      problems.append(f"process {p} differs from process 0 in {len(differing)} field(s): "
                      + "; ".join(shown) + more)
  if problems:
    raise MultihostError("the processes of this job do not run the same thing; every process "
                         "must run the same command, config and code (only the process id "
                         "differs):\n  - " + "\n  - ".join(problems))


# ----------------------------------------------------------------------------- failures
_FAILURE_KEY = "pgf/failure"
_SEEN_PREFIX = "pgf/failure_seen/"


def publish_failure(status: int, message: str) -> dict:
  """Records this process's failure for the others (see `watch_failures`) and returns the
  job's first failure: this one, or another process's that was recorded before it (the likely
  cause, e.g. of this process's collective failing). Without a reachable coordination service
  (process 0 is gone) this process's own failure is returned."""
  mine = {"process": jax.process_index(), "status": int(status), "message": message}
  client = _client()
  if client is None:
    return mine

  def record():
    try:
      client.key_value_set(_FAILURE_KEY, json.dumps(mine))
      return mine
    except Exception:  # pylint: disable=broad-except  (ALREADY_EXISTS: another came first)
      return json.loads(client.key_value_try_get(_FAILURE_KEY))

  return _bounded(record, 5.0, default=mine) or mine


def peer_failure(timeout_s: float = 2.0) -> dict | None:
  """Another process's recorded failure, if any (waiting up to timeout_s for one to appear)."""
  client = _client()
  if client is None:
    return None
  deadline = time.monotonic() + timeout_s
  while True:
    raw = _bounded(lambda: client.key_value_try_get(_FAILURE_KEY), 2.0)
    if raw is not None:
      failure = json.loads(raw)
      if failure["process"] != jax.process_index():
        return failure
    if time.monotonic() >= deadline:
      return None
    time.sleep(0.1)


def acknowledge_failure() -> None:
  """Tells the failed process that this one has seen its failure (it may exit now)."""
  client = _client()
  if client is not None:
    _bounded(lambda: client.key_value_set(f"{_SEEN_PREFIX}{jax.process_index()}", "1"), 2.0)


def wait_for_acknowledgements(timeout_s: float) -> None:
  """Waits until every other process has seen the recorded failure (or timeout_s passed), so
  this process -- process 0 holds the coordination service -- does not exit before they read it."""
  client = _client()
  if client is None:
    return
  deadline = time.monotonic() + timeout_s
  others = jax.process_count() - 1
  while time.monotonic() < deadline:
    seen = _bounded(lambda: client.key_value_dir_get(_SEEN_PREFIX), 2.0) or []
    if len(seen) >= others:
      return
    time.sleep(0.1)


_EXITING_PREFIX = "pgf/exiting/"


def before_exit(timeout_s: float = 5.0) -> None:
  """Says this process is exiting; process 0, which holds the coordination service, first waits
  (up to timeout_s) for the others to say so too: when it ends, the service ends, and JAX aborts
  any process still connected to it (SIGABRT) before it could exit with its own status."""
  client = _client()
  if client is None:
    return
  _bounded(lambda: client.key_value_set(f"{_EXITING_PREFIX}{jax.process_index()}", "1",
                                        allow_overwrite=True), 2.0)
  if jax.process_index() != 0:
    return
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    exiting = _bounded(lambda: client.key_value_dir_get(_EXITING_PREFIX), 2.0) or []
    if len(exiting) >= jax.process_count():
      return
    time.sleep(0.05)


_WATCH: dict = {"stop": None, "thread": None}


def watch_failures(on_failure: Callable[[dict], None], every_s: float = 0.2) -> None:
  """Starts a daemon thread that calls `on_failure(failure)` once another process has recorded
  a failure (`publish_failure`); on_failure is expected to end this process. Call
  `stop_watching` before a normal exit (a thread inside a call to the service when the
  interpreter shuts down aborts the process)."""
  client = _client()
  if client is None or jax.process_count() == 1:
    return
  stop = threading.Event()

  def watch():
    while not stop.wait(every_s):
      try:
        raw = client.key_value_try_get(_FAILURE_KEY)
      except Exception:  # pylint: disable=broad-except  (NOT_FOUND: no failure yet)
        continue
      failure = json.loads(raw)
      if failure["process"] != jax.process_index():
        on_failure(failure)
        return

  thread = threading.Thread(target=watch, name="pgf-failure-watch", daemon=True)
  _WATCH.update(stop=stop, thread=thread)
  thread.start()


def stop_watching() -> None:
  """Stops the thread of `watch_failures` (waits for its current call to return)."""
  if _WATCH["stop"] is not None:
    _WATCH["stop"].set()
    _WATCH["thread"].join(timeout=10.0)
    _WATCH.update(stop=None, thread=None)


def barrier(name: str) -> None:
  """Waits until every process reached the barrier of this name (e.g. after one process
  changed shared files that the others are about to read)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
