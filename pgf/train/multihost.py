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
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

_AXIS = "processes"


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
def _reduce(op: str):
  mesh = _process_mesh()
  reduce = {"max": jnp.max, "min": jnp.min}[op]
  return jax.jit(reduce, out_shardings=NamedSharding(mesh, PartitionSpec()))


class Agreement:
  """The result of an all-reduce that may still be running; `result()` waits for it."""

  def __init__(self, value):
    self._value = value

  def result(self) -> int:
    value = self._value
    if isinstance(value, jax.Array):  # replicated: this process holds a full copy
      value = value.addressable_data(0)
    return int(np.asarray(value))


def _start(op: str, value: int | bool) -> Agreement:
  local = int(value)
  if jax.process_count() == 1:
    return Agreement(local)
  mesh = _process_mesh()
  votes = jax.make_array_from_process_local_data(
      NamedSharding(mesh, PartitionSpec(_AXIS)), np.asarray([local], np.int32),
      (jax.process_count(),))
  return Agreement(_reduce(op)(votes))


def start_max(value: int | bool) -> Agreement:
  """Starts agreeing on the max of `value` over processes (e.g. "has anyone been told to
  stop?"); every process must call it at the same point of the program."""
  return _start("max", value)


def agree_max(value: int | bool) -> int:
  """The max of `value` over all processes (any process's True makes it True)."""
  return _start("max", value).result()


def agree_min(value: int | bool) -> int:
  """The min of `value` over all processes (True only where every process says True)."""
  return _start("min", value).result()


def barrier(name: str) -> None:
  """Waits until every process reached the barrier of this name (e.g. after one process
  changed shared files that the others are about to read)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
