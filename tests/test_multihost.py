"""Multi-process training: N local processes on 127.0.0.1 train, preempt, resume and fine-tune
like one.

Each job is N real processes of `tests/multihost_child.py` (`jax.distributed` over a free
local port, 4 CPU devices per process, gloo collectives), every one in its own process group,
bounded by a timeout and killed with its group if the job hangs or a process dies while the
others wait. Both processes write the same workdir, like the hosts of a TPU slice sharing a
bucket. The references are one process with 8 devices on the same mesh.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from pgf.main import PREEMPTED_EXIT_CODE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = os.path.join(ROOT, "tests", "multihost_child.py")
DEVICES = 8  # in total, split evenly over the processes of a job
JOB_TIMEOUT = 240  # seconds; a hung job is killed (and the test fails) after this
GRACE = 60  # seconds the other processes get once one has exited
LOSS_RTOL = 1e-5  # float32: only the reduction order differs between topologies
TOTAL = 12
# A 1-block ViT on digits, SDGF-stepwise 1:16 with 3 dense steps, so stage changes (and the
# fine-tune edge) fall after the preemption and kill points below.
VIT = {
    "config": "configs/vit_1_16.py:demo",
    "overrides": {
        "model.variant": "Ti/4", "model.width": 32, "model.depth": 1, "model.num_heads": 2,
        "model.mlp_dim": 64, "batch_size": 32, "total_steps": TOTAL, "log_every": 2,
        # eval_batch_size 8: the final evaluation's 38 batches are many collectives (issue 30).
        "checkpoint_every": 4, "eval_every": 0, "eval_batch_size": 8, "keep_checkpoints": 3,
        "optim.warmup_steps": 2, "sparsity.method": "sdgf_stepwise",
        "sparsity.dense_fraction": 0.25, "sparsity.finetune_fraction": 0.25,
        "optim.reference_batch": 32, "async_checkpointing": False,
    },
}
MESHES = {"data": {"mesh.data": 8, "mesh.fsdp": 1, "mesh.model": 1},
          "fsdp_model": {"mesh.data": 1, "mesh.fsdp": 4, "mesh.model": 2}}


# ----------------------------------------------------------------------------- the harness
# A persistent compilation cache shared by the module's jobs: most of them run the same few
# programs, and compiling them again in every job would dominate the test time.
CACHE = {"dir": None}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  CACHE["dir"] = str(tmp_path_factory.mktemp("jax_cache"))
  yield
  CACHE["dir"] = None


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, port: int) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("PGF_", "JAX_", "XLA_", "SLURM_", "OMPI_", "TPU_"))}
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(DEVICES // num_processes))
  if "--xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):  # conftest.py
    env["XLA_FLAGS"] = os.environ["XLA_FLAGS"]
  if CACHE["dir"]:
    env.update(JAX_COMPILATION_CACHE_DIR=CACHE["dir"],
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  if num_processes > 1:
    env.update(PGF_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",  # not on every interface
               PGF_NUM_PROCESSES=str(num_processes), PGF_PROCESS_ID=str(process_id))
  return env


class Job:
  """The exit statuses, outputs and summaries of one job's processes (index = process id)."""

  def __init__(self, returncodes, outputs, seconds=None):
    self.returncodes = returncodes
    self.outputs = outputs  # (stdout, stderr) per process
    self.seconds = seconds  # from the job's start to each process's exit
    self.summaries = []
    for stdout, _ in outputs:
      lines = [l for l in stdout.splitlines() if l.startswith("SUMMARY ")]
      self.summaries.append(json.loads(lines[-1][len("SUMMARY "):]) if lines else None)

  def describe(self) -> str:
    return "\n".join(f"--- process {i}: rc {rc} after {s:.1f} s\n{out[-2000:]}\n{err[-4000:]}"
                     for i, (rc, s, (out, err)) in enumerate(
                         zip(self.returncodes, self.seconds, self.outputs)))


class Launch:
  """One job's processes, started; `wait()` runs them to completion and kills every process
  group if the job runs past `timeout` or others still run GRACE seconds after one exited.

  `env` ({process id: {variable: value}}) changes one process's environment, `delays`
  ({process id: when}) starts a process late, `signals` ([(process id, when, signal)]) sends
  a signal, in order; `when` is seconds after the start, a text that appears in that process's
  stderr, or (delays) "after signals"."""

  def __init__(self, spec: dict, workdir, processes: int, logdir, env=None, delays=None,
               signals=(), timeout=JOB_TIMEOUT, **faults):
    self.spec = json.dumps(dict(spec, workdir=str(workdir), **faults))
    self.processes, self.timeout, self.signals = processes, timeout, list(signals)
    self.last_signal = float("inf")
    self.env, self.delays = env or {}, delays or {}
    port = free_port()
    os.makedirs(logdir, exist_ok=True)
    self.procs, self.files, self.ended = [None] * processes, [], [None] * processes
    self.envs = []
    for i in range(processes):
      self.files.append((open(os.path.join(logdir, f"{i}.out"), "w+"),
                         open(os.path.join(logdir, f"{i}.err"), "w+")))
      self.envs.append(dict(process_env(i, processes, port), **self.env.get(i, {})))
    self.start = time.monotonic()
    self.hung = []
    self._start_due()

  def _due(self, when, process=None) -> bool:
    """`when`: seconds after the start, "after signals" (1 s after the last signal was sent),
    or a text that has appeared in `process`'s stderr."""
    now = time.monotonic()
    if when == "after signals":
      return not self.signals and now - self.last_signal >= 1.0
    if isinstance(when, str):
      self.files[process][1].flush()
      with open(self.files[process][1].name) as f:
        return when in f.read()
    return now - self.start >= when

  def _start_due(self):
    for i in range(self.processes):
      if self.procs[i] is None and self._due(self.delays.get(i, 0)):
        out, err = self.files[i]
        self.procs[i] = subprocess.Popen([sys.executable, CHILD, self.spec], cwd=ROOT,
                                         env=self.envs[i], stdout=out, stderr=err,
                                         start_new_session=True)  # own process group

  def poll(self) -> bool:
    """Advances the job (late starts, signals, timeouts); True once every process ended."""
    now = time.monotonic()
    self._start_due()
    while (self.signals and self.procs[self.signals[0][0]] is not None
           and self._due(self.signals[0][1], self.signals[0][0])):
      process, _, signum = self.signals.pop(0)
      self.last_signal = time.monotonic()
      if self.procs[process].poll() is None:
        os.kill(self.procs[process].pid, signum)
    for i, p in enumerate(self.procs):
      if p is not None and self.ended[i] is None and p.poll() is not None:
        self.ended[i] = now - self.start
    running = [p for p in self.procs if p is None or p.poll() is None]
    if not running:
      return True
    deadline = self.start + self.timeout
    if any(e is not None for e in self.ended):
      deadline = min(deadline, self.start + min(e for e in self.ended if e is not None) + GRACE)
    if now > deadline:
      self.hung = [i for i, p in enumerate(self.procs) if p is None or p.poll() is None]
      return True
    return False

  def wait(self) -> Job:
    try:
      while not self.poll():
        time.sleep(0.1)
    finally:
      self.kill()
    return self.finish()

  def kill(self):
    for p in self.procs:
      if p is not None and p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    for p in self.procs:
      if p is not None:
        p.wait()

  def finish(self) -> Job:
    """Kills what still runs and collects the outputs."""
    self.kill()
    outputs = []
    for out, err in self.files:
      out.seek(0)
      err.seek(0)
      outputs.append((out.read(), err.read()))
      out.close()
      err.close()
    job = Job([p.returncode if p is not None else None for p in self.procs], outputs,
              [e if e is not None else float("nan") for e in self.ended])
    if self.hung:
      pytest.fail(f"job hung: processes {self.hung} killed after the timeout\n{job.describe()}")
    return job


def logdir_of(workdir) -> str:
  return os.path.join(str(workdir) + " logs", str(time.monotonic_ns()))


def launch(spec: dict, workdir, processes: int, logdir, **kwargs) -> Job:
  """Runs one job to completion (see Launch)."""
  return Launch(spec, workdir, processes, logdir, **kwargs).wait()


def run(spec, workdir, processes, expect=0, **kwargs) -> Job:
  job = launch(spec, workdir, processes, logdir_of(workdir), **kwargs)
  assert job.returncodes == [expect] * processes, job.describe()
  return job


def run_together(jobs: dict) -> dict:
  """Runs several jobs at once ({name: Launch kwargs}); {name: Job}. For jobs that mostly
  wait (start-up checks, timeouts), so their waits overlap."""
  launches = {name: Launch(**kwargs, logdir=logdir_of(kwargs["workdir"]))
              for name, kwargs in jobs.items()}
  try:
    done = set()
    while len(done) < len(launches):
      done |= {name for name, launch in launches.items() if name not in done and launch.poll()}
      time.sleep(0.1)
  finally:
    for launch in launches.values():
      launch.kill()
  return {name: launch.finish() for name, launch in launches.items()}


def with_overrides(spec, **overrides):
  return dict(spec, overrides=dict(spec["overrides"], **overrides))


def vit(mesh: str, **overrides):
  return with_overrides(VIT, **MESHES[mesh], **overrides)


# ----------------------------------------------------------------------------- outputs
def final_params(workdir) -> dict:
  with np.load(os.path.join(workdir, "final_params.npz")) as data:
    return {k: data[k] for k in data.files}


def final_masks(params: dict) -> dict:
  """The N:M masks of the final step, computed on this process's single device."""
  import pgf  # pylint: disable=import-outside-toplevel
  from pgf.train import config_lib  # pylint: disable=import-outside-toplevel
  from pgf.train import build_recipe  # pylint: disable=import-outside-toplevel
  config = config_lib.load(os.path.join(ROOT, VIT["config"]))
  config_lib.apply_overrides(config, VIT["overrides"])
  recipe = build_recipe(config, TOTAL)
  tree = {}
  for path, value in params.items():  # "a/b/c" -> nested dicts, as the model's params
    *parents, leaf = path.split("/")
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  masks = pgf.current_masks(tree, recipe, TOTAL - 1)
  from pgf.sparsify import leaf_path  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  return {leaf_path(kp): np.asarray(m) for kp, m in jax.tree_util.tree_flatten_with_path(masks)[0]}


def train_losses(workdir) -> list:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(l["step"], l["loss"]) for l in map(json.loads, f) if l["kind"] == "train"]


def checkpoint_steps(workdir) -> list:
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def assert_bit_identical(a: dict, b: dict):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def assert_same_training(workdir, reference):
  """Same losses (to fp reduction order), same final masks bit for bit."""
  got, want = train_losses(workdir), train_losses(reference)
  assert [s for s, _ in got] == [s for s, _ in want]
  np.testing.assert_allclose([l for _, l in got], [l for _, l in want], rtol=LOSS_RTOL)
  masks, reference_masks = final_masks(final_params(workdir)), final_masks(final_params(reference))
  assert masks and masks.keys() == reference_masks.keys()
  for key in masks:
    np.testing.assert_array_equal(masks[key], reference_masks[key], err_msg=key)


def stopped_steps(job) -> list:
  return [s["stopped_at"] if s["preempted"] else None for s in job.summaries]


# ----------------------------------------------------------------------------- in this process
def test_plan_from_flags_and_environment():
  from pgf.train.distributed import plan  # pylint: disable=import-outside-toplevel
  assert plan({}) is None  # one process: nothing to initialise
  explicit = {"coordinator_address": "10.0.0.2:1234", "num_processes": 4, "process_id": 3}
  assert plan({"PGF_COORDINATOR_ADDRESS": "10.0.0.2:1234", "PGF_NUM_PROCESSES": "4",
               "PGF_PROCESS_ID": "3"}) == explicit
  assert plan({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4",
               "JAX_PROCESS_ID": "3"}) == explicit
  # Flags win over the environment.
  assert plan({"PGF_PROCESS_ID": "0"}, "10.0.0.2:1234", 4, 3) == explicit
  # Clusters JAX detects by itself (or PGF_DISTRIBUTED=1): JAX fills in what is not given.
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-4]"}  # inside srun
  assert plan(slurm) == {}
  assert plan({"SLURM_JOB_ID": "7"}) is None  # the batch script itself, outside srun
  assert plan({"TPU_WORKER_HOSTNAMES": "a,b"}) == {}
  assert plan({"TPU_WORKER_HOSTNAMES": "a"}) is None  # a single-host TPU VM
  assert plan({"PGF_DISTRIBUTED": "1"}) == {}
  assert plan(dict(slurm, PGF_COORDINATOR_ADDRESS="h:1")) == {
      "coordinator_address": "h:1", "num_processes": None, "process_id": None}


@pytest.mark.parametrize("environ,flags,fragments", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, {},
     ["JAX_COORDINATOR_ADDRESS given but not", "--num_processes (or PGF_NUM_PROCESSES)",
      "--process_id (or PGF_PROCESS_ID)"]),
    ({"PGF_NUM_PROCESSES": "two"}, {}, ["PGF_NUM_PROCESSES='two'", "must be an integer"]),
    ({}, {"coordinator_address": "h:1", "num_processes": 2, "process_id": 2},
     ["--process_id=2 is not below --num_processes=2"]),
])
def test_incomplete_or_bad_settings_name_what_is_missing(environ, flags, fragments):
  from pgf.train.distributed import plan  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError) as info:
    plan(environ, **flags)
  for fragment in fragments:
    assert fragment in str(info.value), (fragment, str(info.value))


def test_one_process_agrees_with_itself():
  from pgf.train import multihost  # pylint: disable=import-outside-toplevel
  from pgf.train.checkpointing import agreed_newest_step  # pylint: disable=import-outside-toplevel
  assert multihost.agree_max(True, "a") == 1 and multihost.agree_min(False, "b") == 0
  assert multihost.start_max(7, "c", 3).result() == 7
  assert agreed_newest_step([3, 6, 9]) == 9 and agreed_newest_step([3, 6, 9], below=9) == 6
  assert agreed_newest_step([3], below=3) is None and agreed_newest_step([]) is None


def test_init_from_reads_only_the_params_and_checks_they_fit(tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from pgf.train.checkpointing import Checkpointer  # pylint: disable=import-outside-toplevel
  from pgf.train import _init_params_from  # pylint: disable=import-outside-toplevel
  source = tmp_path / "pre-training"
  checkpointer = Checkpointer(str(source), async_save=False)
  # The source's optimizer state has nothing in common with the fine-tune's.
  checkpointer.save(3, {"step": jnp.int32(3), "params": {"w": jnp.arange(8.0).reshape(4, 2)},
                        "opt_state": {"momentum": jnp.ones(7)}})
  checkpointer.close()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = lambda shape: {"params": {"w": jax.ShapeDtypeStruct(shape, jnp.float32,
                                                                  sharding=device)}}
  state = {"step": jnp.int32(0)}
  loaded = _init_params_from(str(source), state, abstract((4, 2)), optax.sgd(0.1, momentum=0.9))
  np.testing.assert_array_equal(loaded["params"]["w"], np.arange(8.0).reshape(4, 2))
  assert int(loaded["step"]) == 0 and loaded["params"]["w"].sharding == device
  with pytest.raises(ValueError, match="its params do not match this model"):
    _init_params_from(str(source), state, abstract((4, 3)), optax.sgd(0.1))
  with pytest.raises(FileNotFoundError, match="no checkpoint found"):
    _init_params_from(str(tmp_path / "nothing here"), state, abstract((4, 2)), optax.sgd(0.1))


def test_exit_status():
  from pgf import main  # pylint: disable=import-outside-toplevel
  assert main.exit_status({"preempted": False}) == main.EXIT_FINISHED == 0
  assert main.exit_status({"preempted": True}) == PREEMPTED_EXIT_CODE == 75


# ----------------------------------------------------------------------------- shared runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Lazily run and remembered jobs: {name: workdir}. Each reference runs once per module."""
  base = tmp_path_factory.mktemp("multihost")
  done = {}

  def get(name):
    if name not in done:
      mesh, processes = name.rsplit("_", 1)  # "fsdp_model_2p" -> ("fsdp_model", "2p")
      workdir = base / f"{name} uninterrupted"
      job = run(vit(mesh), workdir, int(processes[0]))
      assert all(s["final_step"] == TOTAL for s in job.summaries), job.describe()
      done[name] = workdir
    return done[name]

  get.base = base
  return get


# ----------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("mesh", ["data", "fsdp_model"])
def test_two_processes_train_like_one(runs, mesh):
  """2 processes x 4 devices train like 1 process x 8 devices (FSDP x model parallelism used
  to deadlock: process 0 alone computed the logged sparsity of sharded params). The reference
  is data-parallel; tests/test_sharding.py shows the meshes agree within one process."""
  two = runs(f"{mesh}_2p")
  assert_same_training(two, runs("data_1p"))
  # The final evaluation sweeps 38 batches of 8, twice (current and deployed weights): it used
  # to deadlock in 2 processes (independent all-reduce programs in flight; pgf/train/loop.py).
  got, want = eval_metrics(two), eval_metrics(runs("data_1p"))
  assert got.keys() == want.keys() and "current_accuracy" in got
  for key in got.keys() - {"step", "kind"}:
    np.testing.assert_allclose(got[key], want[key], rtol=LOSS_RTOL, err_msg=key)
  # Only process 0 writes the logs, once per log step.
  assert [s for s, _ in train_losses(two)] == list(range(2, TOTAL + 1, 2))


def test_sigterm_to_one_process_stops_all_at_the_same_step(runs, tmp_path):
  workdir = tmp_path / "preempted"
  job = run(vit("data"), workdir, 2, expect=PREEMPTED_EXIT_CODE, term_at=5,
            fault_processes=[1])
  # The signal reaches process 1 while it fetches step 5's batch: that step finishes
  # everywhere and both save it.
  assert stopped_steps(job) == [6, 6], job.describe()
  assert 6 in checkpoint_steps(workdir)
  assert "Received signal 15" in job.outputs[1][1]
  assert "on another process" in job.outputs[0][1]
  job = run(vit("data"), workdir, 2)
  assert [s["resumed_from"] for s in job.summaries] == [6, 6]
  assert_bit_identical(final_params(workdir), final_params(runs("data_2p")))


def test_sigterm_during_eval_saves_the_reported_step(runs, tmp_path):
  """One process: a signal that lands while evaluating is not lost; the run stops with a
  checkpoint at the step it reports and the preemption exit status."""
  workdir = tmp_path / "preempted in eval"
  job = run(vit("data", eval_every=6), workdir, 1, expect=PREEMPTED_EXIT_CODE, term_in_eval=6)
  stopped = job.summaries[0]["stopped_at"]
  assert stopped in checkpoint_steps(workdir), job.describe()
  assert stopped == 7  # the step after the evaluation
  job = run(vit("data"), workdir, 1)
  assert job.summaries[0]["resumed_from"] == stopped
  assert_bit_identical(final_params(workdir), final_params(runs("data_1p")))


def test_sigterm_while_starting_is_not_lost(tmp_path):
  """A signal before the loop (compiling, restoring) stops the run after its first step."""
  workdir = tmp_path / "preempted while starting"
  job = run(vit("data"), workdir, 1, expect=PREEMPTED_EXIT_CODE, term_at_start=True)
  assert job.summaries[0]["stopped_at"] == 1 and checkpoint_steps(workdir) == [1]


def test_sigkill_of_both_processes_resumes_in_one(runs, tmp_path):
  workdir = tmp_path / "killed"
  run(vit("fsdp_model"), workdir, 2, expect=-signal.SIGKILL, kill_at=7)
  assert checkpoint_steps(workdir) == [4]
  job = run(vit("data"), workdir, 1)  # 8 devices in one process, another mesh
  assert job.summaries[0]["resumed_from"] == 4 and job.summaries[0]["final_step"] == TOTAL
  assert_same_training(workdir, runs("fsdp_model_2p"))


@pytest.mark.parametrize("mesh", ["data", "fsdp_model"])
def test_init_from_a_two_process_run_in_one_process(runs, tmp_path, mesh):
  """Fine-tuning in 1 process from a 2-process pre-training (replicated or sharded params)."""
  source = runs(f"{mesh}_2p")
  init_params = tmp_path / "init_params.npz"
  workdir = tmp_path / "fine-tune"
  spec = vit("data", init_from=str(source))  # the reference's program: compiled already
  run(spec, workdir, 1, init_params_out=str(init_params))
  with np.load(init_params) as data:
    assert_bit_identical({k: data[k] for k in data.files}, final_params(source))


def test_checkpoint_torn_on_one_host_only(runs, tmp_path):
  """Process 1 reads the newest step torn; process 0 reads it intact and alone would resume
  from it. Both must fall back to the same older step, and it is moved aside once."""
  workdir = tmp_path / "torn on one host"
  shutil.copytree(runs("data_2p"), workdir)
  os.remove(workdir / "final_params.npz")
  assert checkpoint_steps(workdir) == [4, 8, 12]
  job = run(vit("data"), workdir, 2, torn_view=12, fault_processes=[1])
  assert [s["resumed_from"] for s in job.summaries] == [8, 8], job.describe()
  assert "could not be restored (" in job.outputs[1][1]  # its own read failed
  assert "process 0 moves it aside" in job.outputs[1][1]
  assert "did not restore on another process" in job.outputs[0][1]
  assert os.listdir(workdir / "checkpoints_corrupt") == ["12"]  # moved once, by process 0
  assert checkpoint_steps(workdir) == [4, 8, 12]  # and saved again
  assert_bit_identical(final_params(workdir), final_params(runs("data_2p")))


# ----------------------------------------------------------------------------- issue 30: failures
STARTUP = {"PGF_STARTUP_TIMEOUT": "8"}  # seconds; launch mistakes end within this (+ 10)


def errors(job, process) -> str:
  """What a process printed from its first "pgf: " message on (messages span lines)."""
  err = job.outputs[process][1]
  starts = [i for i in range(len(err)) if err.startswith("pgf: ", i)
            and not err.startswith("pgf: connecting to the job", i)]
  return err[starts[0]:] if starts else ""


def test_disagreements_failures_and_launch_mistakes_end_every_process_with_a_message(tmp_path):
  """Jobs that cannot train end on every process within seconds, each process printing what
  went wrong (and where), none training on; all of them run at once, as they mostly wait.

  Processes that disagree (config, code), a failure on one process, a vote on another code path,
  a SIGTERM while connecting, and the launch mistakes: wrong port, a process never started, a
  process id taken twice, --num_processes differing."""
  spec = vit("data")
  port = free_port()
  mistakes = {
      "wrong port": {1: {"PGF_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}"}},
      "duplicate id": {1: {"PGF_PROCESS_ID": "0"}},
      "num_processes differs": {1: {"PGF_NUM_PROCESSES": "3"}},
  }
  jobs = {
      "disagree": dict(spec=spec, processes=2, process_overrides={"1": {"seed": 1,
                                                                       "batch_size": 64}},
                       code_edit="pgf/train/loop.py", fault_processes=[1]),
      "fails": dict(spec=spec, processes=2, fail_at=-1, fault_processes=[1]),
      "other path": dict(spec=spec, processes=2, extra_vote=True, fault_processes=[1]),
      # SIGTERM to process 0 while it waits for process 1 to connect; 1 starts after that.
      "term while connecting": dict(spec=spec, processes=2, signals=[
          (0, "pgf: connecting to the job", signal.SIGTERM)], delays={1: "after signals"}),
      "never started": dict(spec=spec, processes=1, env={0: dict(
          STARTUP, PGF_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", PGF_NUM_PROCESSES="2",
          PGF_PROCESS_ID="0", JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}",
          JAX_NUM_CPU_DEVICES="4")}),
      **{name: dict(spec=spec, processes=2, env={i: dict(STARTUP, **env.get(i, {}))
                                                 for i in range(2)})
         for name, env in mistakes.items()},
  }
  for name, job in jobs.items():
    job.update(workdir=tmp_path / name, timeout=90)
  done = run_together(jobs)
  for name, job in done.items():
    print(name, job.returncodes, [round(s, 1) for s in job.seconds])
  job = done["disagree"]
  assert job.returncodes == [1, 1], job.describe()
  for p in range(2):
    for field in ("config.seed = 1 (process 0: 0)", "config.batch_size = 64 (process 0: 32)",
                  "code.pgf/train/loop.py"):
      assert field in errors(job, p), job.describe()
  assert not os.path.exists(tmp_path / "disagree" / "checkpoints"), "it must not train"
  job = done["fails"]
  assert job.returncodes == [1, 1], job.describe()
  for p in range(2):
    assert "injected failure on process 1 before compiling" in errors(job, p), job.describe()
  assert "process 1 failed (exit status 1)" in errors(job, 0)
  job = done["other path"]
  assert job.returncodes == [1, 1], job.describe()
  for p in range(2):  # whichever process noticed first, both name the two agreements
    assert "was paired with another process's vote on" in errors(job, p), job.describe()
    assert "'newest checkpoint to restore'" in errors(job, p), job.describe()
  assert "'an extra vote of the test'" in job.outputs[1][1], job.describe()
  job = done["term while connecting"]
  assert job.returncodes == [PREEMPTED_EXIT_CODE] * 2, job.describe()
  assert "before training started" in job.outputs[0][1]
  job = done["never started"]
  assert job.returncodes == [1], job.describe()
  assert "not all 2 processes connected" in errors(job, 0), job.describe()
  job = done["wrong port"]
  assert job.returncodes == [1, 1], job.describe()
  assert "nothing accepts connections at --coordinator_address" in errors(job, 1)
  assert "not all 2 processes connected" in errors(job, 0)
  # A duplicate id can make JAX abort a process itself (SIGABRT, "a request from a newer
  # incarnation") before pgf's timer fires; either way no process waits past the timeout.
  job = done["duplicate id"]
  assert all(rc in (1, -signal.SIGABRT) for rc in job.returncodes), job.describe()
  assert all("could not join the job" in errors(job, p) or "Timeout" in job.outputs[p][1]
             or "newer incarnation" in job.outputs[p][1] for p in range(2)), job.describe()
  job = done["num_processes differs"]
  assert job.returncodes == [1, 1], job.describe()
  for p in range(2):
    assert "--num_processes=3 on process 1, but the job has 2 processes" in errors(job, p)


@pytest.mark.parametrize("lost", [1, 0])
def test_a_lost_peer_ends_the_job_and_the_rerun_logs_each_step_once(runs, tmp_path, lost):
  """kill -9 of one process (1, or 0: the coordinator) at step 3, before the first checkpoint:
  the survivor exits with EXIT_PEER_LOST within seconds (not a minute in JAX's shutdown, then
  SIGABRT). The rerun starts from scratch (here in 1 process) and metrics.jsonl then holds
  each logged step once."""
  from pgf.main import EXIT_PEER_LOST  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "peer lost"
  job = launch(vit("data"), workdir, 2, logdir_of(workdir), kill_at=3, fault_processes=[lost])
  survivor = 1 - lost
  assert job.returncodes[lost] == -signal.SIGKILL, job.describe()
  if lost == 1:
    assert job.returncodes[survivor] == EXIT_PEER_LOST, job.describe()
    assert "lost contact" in errors(job, survivor), job.describe()
  else:  # the coordination service died with process 0: JAX may abort the survivor first
    assert job.returncodes[survivor] in (EXIT_PEER_LOST, -signal.SIGABRT), job.describe()
    assert ("lost contact" in errors(job, survivor) or "Terminating process because the JAX "
            "distributed service detected fatal errors" in job.outputs[survivor][1])
  print("seconds to exit after the kill:", job.seconds[survivor] - job.seconds[lost])
  assert job.seconds[survivor] - job.seconds[lost] < GRACE
  if lost == 1:  # process 0 logged step 2 before the kill; the rerun logs it again
    assert [s for s, _ in train_losses(workdir)] == [2]
    run(vit("data"), workdir, 1)
    assert [s for s, _ in train_losses(workdir)] == list(range(2, TOTAL + 1, 2))
    assert_bit_identical(final_params(workdir), final_params(runs("data_1p")))


def eval_metrics(workdir) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [l for l in map(json.loads, f) if l["kind"] == "eval"]
  assert len(rows) == 1
  return rows[0]
