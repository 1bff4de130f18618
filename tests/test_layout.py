"""The package layout: no import circles, a core free of flax and the trainer, and the move of
the trainer into pgf/train/ and the families into pgf/families/ changing nothing a user has.

The fixtures in tests/data/ were written by the code before the move
(tests/data/make_layout_fixtures.py): a two-step checkpoint of a tiny ViT, and every config's
parameter shapes and recipe.
"""

import ast
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
CORE = ("pgf", "pgf.masks", "pgf.opt_state", "pgf.recipes", "pgf.sparsify", "pgf.transform")
# What the core may import besides itself: the standard library, jax, numpy and optax.
CORE_THIRD_PARTY = {"jax", "jaxlib", "numpy", "optax"}


# ------------------------------------------------------------------------- the import graph
def module_names(package_dir: str) -> dict[str, str]:
  """{dotted module name: file} of every module under `package_dir` (a package folder)."""
  base = os.path.dirname(os.path.abspath(package_dir))
  out = {}
  for path in glob.glob(os.path.join(package_dir, "**", "*.py"), recursive=True):
    rel = os.path.relpath(path, base)[:-3].split(os.sep)
    if rel[-1] == "__init__":
      rel = rel[:-1]
    out[".".join(rel)] = path
  return out


def imports_of(name: str, path: str, modules) -> tuple[set[str], set[str]]:
  """(modules of the package that `name` imports, top-level names of everything else).

  Every import statement counts, at module level or inside a function: a circle through a
  lazy import is still a circle. Importing `a.b.c` also runs the packages `a` and `a.b`, so
  those count too, except the importer's own parent packages (already running by then).
  """
  tree = ast.parse(open(path).read(), path)
  is_package = path.endswith("__init__.py")
  inside, outside = set(), set()

  def add(target: str):
    parts = target.split(".")
    for i in range(1, len(parts) + 1):
      prefix = ".".join(parts[:i])
      own_parent = name == prefix or name.startswith(prefix + ".")
      if prefix in modules and not own_parent:
        inside.add(prefix)

  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split(".")[0] in {m.split(".")[0] for m in modules}:
          add(alias.name)
        else:
          outside.add(alias.name.split(".")[0])
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        package = name if is_package else name.rpartition(".")[0]
        for _ in range(node.level - 1):
          package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
      else:
        base = node.module
      if base.split(".")[0] not in {m.split(".")[0] for m in modules}:
        outside.add(base.split(".")[0])
        continue
      add(base)
      for alias in node.names:
        if f"{base}.{alias.name}" in modules:
          add(f"{base}.{alias.name}")
  return inside, outside


def import_graph(package_dir: str):
  modules = module_names(package_dir)
  graph, external = {}, {}
  for name, path in modules.items():
    graph[name], external[name] = imports_of(name, path, modules)
  return graph, external


def find_cycle(graph) -> list[str] | None:
  """One import circle as [a, b, ..., a], or None."""
  state = {}
  stack = []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_no_import_circle_in_pgf():
  graph, _ = import_graph(os.path.join(ROOT, "pgf"))
  assert len(graph) > 50  # every module was read
  cycle = find_cycle(graph)
  assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_circle_finder_finds_lazy_and_package_circles(tmp_path):
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "a.py").write_text("def f():\n  from pkg.sub import b\n")  # a lazy import
  (pkg / "sub" / "__init__.py").write_text("from pkg.sub import c\n")
  (pkg / "sub" / "b.py").write_text("")
  (pkg / "sub" / "c.py").write_text("import pkg.a\n")
  graph, _ = import_graph(str(pkg))
  # a -> pkg.sub (the package runs first) -> pkg.sub.c -> a
  assert find_cycle(graph) == ["pkg.a", "pkg.sub", "pkg.sub.c", "pkg.a"]
  (pkg / "sub" / "c.py").write_text("")
  assert find_cycle(import_graph(str(pkg))[0]) is None


def test_core_imports_neither_flax_nor_the_trainer():
  graph, external = import_graph(os.path.join(ROOT, "pgf"))
  reached, todo = set(), list(CORE)
  while todo:
    name = todo.pop()
    if name not in reached:
      reached.add(name)
      todo.extend(graph[name])
  assert reached == set(CORE), f"the core imports {sorted(reached - set(CORE))}"
  third_party = set().union(*(external[m] for m in CORE)) - set(sys.stdlib_module_names)
  assert third_party <= CORE_THIRD_PARTY, f"the core imports {sorted(third_party)}"
  # And at run time: `import pgf` loads no flax and nothing of the trainer or the families.
  code = ("import sys, pgf; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
          "('flax', 'orbax') or m.startswith(('pgf.train', 'pgf.families', 'pgf.models')))\n"
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120,
                 env=dict(os.environ, JAX_PLATFORMS="cpu"))


# ------------------------------------------------------------------------- configs, unchanged
def _load(path, arg=None):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


SHAPES = json.load(open(os.path.join(DATA, "config_shapes.json")))


def _shapes(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): list(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _digest(shape_dict):
  text = json.dumps(sorted(shape_dict.items()))
  return {"leaves": len(shape_dict),
          "params": int(sum(np.prod(s) for s in shape_dict.values())),
          "sha256": hashlib.sha256(text.encode()).hexdigest()}


def test_every_config_is_in_the_fixture():
  names = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))}
  assert {k.split(":")[0] for k in SHAPES} == names


@pytest.mark.parametrize("key", sorted(SHAPES))
def test_config_gives_the_same_model_and_recipe(key):
  from pgf.deploy import model as deploy_model  # pylint: disable=g-import-not-at-top
  from pgf.train import build_recipe  # pylint: disable=g-import-not-at-top
  name, _, arg = key.partition(":")
  config = _load(os.path.join(ROOT, "configs", name), arg or None)
  want = SHAPES[key]
  assert config.model.name == want["model_name"]
  assert json.loads(json.dumps(build_recipe(config, 1000).to_dict())) == want["recipe"]
  if config.model.name == "t5" and config.data.get("tokenizer") not in ("byte", None):
    config.data.tokenizer = "byte"  # the fixture's vocabulary comes from vocab_size
  _, params, _ = deploy_model.abstract_model(config)
  got = _digest(_shapes(params))
  assert got == {k: want[k] for k in got}, f"{key}: {got} != {want}"


# ------------------------------------------------------------------------- checkpoints restore
def _fixture_run(tmp_path, steps):
  sys.path.insert(0, DATA)
  try:
    import make_layout_fixtures  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(DATA)
  workdir = str(tmp_path / "run")
  shutil.copytree(os.path.join(DATA, "vit_ckpt"), workdir)
  config = make_layout_fixtures.tiny_vit_config(steps)
  saved = json.load(open(os.path.join(workdir, "config.json")))
  model = json.loads(config.to_json_best_effort())["model"]
  # Fields added after the fixture was written, at the value that reproduces the old model.
  added = {"remat": "none"}
  assert {k: v for k, v in model.items() if added.get(k, object()) != v} == saved["model"]
  return config, workdir


def test_checkpoint_from_before_the_move_restores_exactly(tmp_path):
  from pgf.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config, workdir = _fixture_run(tmp_path, steps=2)
  summary = train_and_evaluate(config, workdir)  # holds the final step: restore only
  assert summary["resumed_from"] == 2 and summary["final_step"] == 2
  want = json.load(open(os.path.join(workdir, "params_sum.json")))["params"]
  params = jax.device_get(summary["state"]["params"])
  got = {"/".join(str(getattr(k, "key", k)) for k in path):
         [float(np.sum(np.asarray(leaf, np.float64))), list(np.shape(leaf))]
         for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert got == want
  assert not os.path.exists(os.path.join(workdir, "checkpoints_corrupt"))


def test_checkpoint_from_before_the_move_resumes(tmp_path):
  from pgf.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config, workdir = _fixture_run(tmp_path, steps=3)
  summary = train_and_evaluate(config, workdir)
  assert summary["resumed_from"] == 2 and summary["final_step"] == 3
  assert np.isfinite(summary["deployed_loss"])
  assert not os.path.exists(os.path.join(workdir, "checkpoints_corrupt"))


def test_every_module_imports_next_to_every_other():
  """All pgf modules import together in one interpreter. Only pgf.main defines absl flags on
  import; the other command lines (pgf.aot, pgf.deploy, ...) define theirs when run, so a
  program or a test that imports pgf.main and a CLI module (a helper of pgf.aot's, say) never
  meets a DuplicateFlagError."""
  code = ("import importlib, pkgutil, pgf\n"
          "names = sorted(m.name for m in pkgutil.walk_packages(pgf.__path__, 'pgf.'))\n"
          "for name in names:\n"
          "  importlib.import_module(name)\n"
          "print(len(names))\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert int(result.stdout.split()[-1]) > 50  # every module was walked, CLIs included
