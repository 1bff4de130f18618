"""The documentation is tested like code (issue 31).

* Every ```python block in README.md and docs/ runs (or, where it needs an accelerator, a
  download or a cluster and says so with `<!-- doctest: compile-only: why -->`, compiles).
* Every `python -m pgf...` / `python experiments/....py` command shown parses with the real flag
  definitions, config overrides included; every ```bash block passes `bash -n`.
* The site builds with `mkdocs build --strict` (no broken link, anchor or missing page), the
  links a GitHub reader follows resolve, and the repo paths and `pgf.*` names the text mentions
  exist.
* README.md stays a front page: at most 250 lines, with the exact test command .ci/run runs.
"""

import fnmatch
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import doc_examples  # noqa: E402  pylint: disable=wrong-import-position

REPO = doc_examples.REPO
TEST_COMMAND = "pip install -r requirements.txt -e . && python -m pytest -q -n 2 --dist loadfile"
BLOCKS = doc_examples.all_blocks()
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def _chains():
  """Python blocks grouped so that a `continue` block runs after the block it continues."""
  chains = []
  for b in PYTHON:
    if b.directive == "continue":
      assert chains and chains[-1][-1].path == b.path, f"{b.id}: nothing to continue on this page"
      chains[-1].append(b)
    else:
      chains.append([b])
  return chains


CHAINS = _chains()


RUN = [c for c in CHAINS if c[0].directive != "compile-only"]
COMPILE_ONLY = [c for c in CHAINS if c[0].directive == "compile-only"]


@pytest.fixture(scope="module")
def example_results():
  """Runs every runnable chain once, in one child process (see tests/docs_examples_child.py)."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"))
  todo = [[[b.id, b.code] for b in chain] for chain in RUN]
  r = subprocess.run([sys.executable, os.path.join(REPO, "tests", "docs_examples_child.py")],
                     input=json.dumps(todo), capture_output=True, text=True, env=env,
                     timeout=900, check=False)
  assert "@@RESULTS@@" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
  return dict(zip([c[0].id for c in RUN], json.loads(r.stdout.split("@@RESULTS@@")[-1])))


@pytest.mark.parametrize("chain", RUN, ids=[c[0].id for c in RUN])
def test_python_example_runs(chain, example_results):
  error = example_results[chain[0].id]
  assert not error, f"{chain[0].id} failed:\n{error}"


@pytest.mark.parametrize("chain", COMPILE_ONLY, ids=[c[0].id for c in COMPILE_ONLY])
def test_python_example_that_cannot_run_here_compiles(chain):
  assert chain[0].reason.strip(), (
      f"{chain[0].id}: say why it cannot run: <!-- doctest: compile-only: <why> -->")
  for block in chain:
    compile(block.code, block.id, "exec")


def test_examples_are_collected():
  """The collector finds the blocks (a broken fence regex would silently test nothing)."""
  ran = [b for b in PYTHON if b.directive != "compile-only"]
  assert len(PYTHON) >= 10 and len(ran) >= 8, [b.id for b in PYTHON]
  readme = [b for b in PYTHON if b.path == "README.md"]
  assert readme and all(b.directive == "run" for b in readme), "README's examples must run"


def test_code_is_fenced():
  """An indented code block would escape the example and command checks: fence it."""
  bad = []
  for path in doc_examples.doc_files():
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
      lines = f.read().splitlines()
    in_code = False
    for i, line in enumerate(lines):
      if line.strip().startswith(("```", "~~~")):
        in_code = not in_code
        continue
      if in_code or not re.match(r"^    \S", line) or i == 0 or lines[i - 1].strip():
        continue
      prev = next((x for x in reversed(lines[:i - 1]) if x.strip()), "")
      if not re.match(r"^\s*([*-]|\d+\.)\s|^  ", prev):
        bad.append(f"{path}:{i + 1}: {line.strip()[:80]}")
  assert not bad, "indented code blocks (use ``` fences):\n" + "\n".join(bad)


def test_bash_blocks_parse():
  bad = []
  for b in BLOCKS:
    if b.lang in ("bash", "sh"):
      r = subprocess.run(["bash", "-n"], input=b.code, capture_output=True, text=True, check=False)
      if r.returncode:
        bad.append(f"{b.id}: {r.stderr.strip()}")
  assert not bad, "\n".join(bad)


# Command lines that must NOT parse: they prove the check can fail (a misspelt config field,
# flag and grid name).
MUST_FAIL = [
    {"target": "pgf.main", "args": ["--config=configs/vit_1_16.py:demo", "--workdir=/tmp/x",
                                    "--config.optim.lrr=1e-3"]},
    {"target": "pgf.main", "args": ["--config=configs/vit_1_16.py:demo", "--workdirr=/tmp/x"]},
    {"target": "experiments/sweep.py", "args": ["--grid=no_such_grid", "--out=/tmp/x"]},
]


def test_documented_commands_parse_with_their_real_flags():
  cmds = doc_examples.commands()
  targets = {c.target for c in cmds}
  assert len(cmds) >= 30 and {"pgf.main", "pgf.deploy", "experiments/sweep.py"} <= targets, targets
  bad = []
  for c in cmds:
    if c.target.endswith(".py"):
      if not os.path.isfile(os.path.join(REPO, c.target)):
        bad.append(f"{c.id}: no such script")
    elif importlib.util.find_spec(c.target) is None:
      bad.append(f"{c.id}: no such module")
  assert not bad, "\n".join(bad)
  # A bare `python -m pgf.main` names the program; only command lines with arguments are parsed.
  cmds = [c for c in cmds if c.args]
  todo = [{"target": c.target, "args": c.args} for c in cmds] + MUST_FAIL
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, os.path.join(REPO, "tests", "docs_cli_child.py")],
                     input=json.dumps(todo), capture_output=True, text=True, cwd=REPO, env=env,
                     timeout=300, check=False)
  assert "@@RESULTS@@" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
  errors = json.loads(r.stdout.split("@@RESULTS@@")[-1])
  must_fail, errors = errors[len(cmds):], errors[:len(cmds)]
  assert all(must_fail), f"the flag check accepted a wrong command line: {must_fail}"
  bad = [f"{c.id}\n    {c.target} {' '.join(c.args)}\n    -> {e}" for c, e in zip(cmds, errors) if e]
  assert not bad, "\n".join(bad)


def test_docs_site_builds_in_strict_mode(tmp_path):
  assert importlib.util.find_spec("mkdocs") and importlib.util.find_spec("mkdocstrings"), (
      "the docs build needs mkdocs, mkdocs-material and mkdocstrings: pip install -r requirements.txt")
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                      str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True,
                     env=env, timeout=300, check=False)
  assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
  assert (tmp_path / "site" / "api" / "core.html").is_file()
  core = (tmp_path / "site" / "api" / "core.html").read_text()
  assert "pgf.sparsify.sparsify" in core or 'id="pgf.sparsify' in core, "API reference is empty"


def test_readme_is_a_front_page():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  assert len(readme.splitlines()) <= 250
  assert TEST_COMMAND in readme.splitlines()
  with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
    assert "python -m pytest -q -n 2 --dist loadfile" in f.read()


def _github_slug(heading):
  s = heading.strip().lower()
  s = re.sub(r"[^\w\- ]", "", s)
  return s.replace(" ", "-")


def _anchors(path):
  with open(path, encoding="utf-8") as f:
    text = re.sub(r"^```.*?^```", "", f.read(), flags=re.S | re.M)
  return {_github_slug(h) for h in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


def test_relative_links_resolve_for_a_github_reader():
  bad = []
  for path in doc_examples.doc_files():
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
      text = re.sub(r"^\s*```.*?^\s*```", "", f.read(), flags=re.S | re.M)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
      if re.match(r"^[a-z]+:", target):
        continue
      file, _, anchor = target.partition("#")
      full = os.path.normpath(os.path.join(REPO, os.path.dirname(path), file)) if file else \
          os.path.join(REPO, path)
      if not os.path.exists(full):
        bad.append(f"{path}: {target} (no such file)")
      elif anchor and full.endswith(".md") and anchor not in _anchors(full):
        bad.append(f"{path}: {target} (no heading with that anchor)")
  assert not bad, "\n".join(bad)


REPO_PATH = re.compile(r"^(?:pgf|configs|experiments|tests|docs|\.ci)/[\w./-]*$")


def _ignored(token):
  """Paths .gitignore keeps out of the repository (e.g. a grid's runs/) are named, not shipped."""
  with open(os.path.join(REPO, ".gitignore"), encoding="utf-8") as f:
    patterns = [p.strip() for p in f if p.strip() and not p.startswith("#")]
  full = "/" + token
  return any(fnmatch.fnmatch(full, p if p.startswith("/") else "*/" + p) or
             fnmatch.fnmatch(full.rstrip("/") + "/", p) for p in patterns)


def test_repo_paths_named_in_the_text_exist():
  bad = []
  for path in doc_examples.doc_files():
    for span in doc_examples._inline_spans(path):  # pylint: disable=protected-access
      for token in span.split():
        token = token.rstrip(".,;:)")
        if (REPO_PATH.match(token) and "..." not in token
            and not os.path.exists(os.path.join(REPO, token))
            and not _ignored(token)):
          bad.append(f"{path}: `{span}`")
  assert not bad, "\n".join(sorted(set(bad)))


PGF_NAME = re.compile(r"^(pgf(?:\.[A-Za-z_]\w*)+)")


def _resolve(dotted):
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:i]))
    except ImportError:
      continue
    for attr in parts[i:]:
      obj = getattr(obj, attr)
    return obj
  raise ImportError(dotted)


def test_pgf_names_named_in_the_text_exist():
  bad = []
  for path in doc_examples.doc_files():
    for span in doc_examples._inline_spans(path):  # pylint: disable=protected-access
      m = PGF_NAME.match(span.strip())
      if not m or span.strip().startswith("pgf.main --") or "/" in m.group(1):
        continue
      try:
        _resolve(m.group(1))
      except (ImportError, AttributeError) as e:
        bad.append(f"{path}: `{span}` ({type(e).__name__}: {e})")
  assert not bad, "\n".join(sorted(set(bad)))
