"""Parses documented command lines with the real flag definitions (run by tests/test_docs.py).

Reads [{"target": "pgf.main" | "experiments/x.py", "args": [...]}, ...] as JSON on stdin and
prints one JSON list of error messages ("" = parsed). An absl module is executed as __main__
with `absl.app.run` replaced, so its flags (defined at import or under __main__) are registered
and each command line is parsed by them, config overrides (--config.x.y=...) included, without
running `main`. An argparse script is executed with `parse_args` stopped right after parsing.
"""

import argparse
import contextlib
import io
import json
import runpy
import sys

from absl import app, flags, logging  # noqa: F401  (their flags belong to the baseline)

BASELINE = set(flags.FLAGS)


class _Parsed(Exception):
  pass


def _reset_flags():
  for name in list(flags.FLAGS):
    if name not in BASELINE:
      delattr(flags.FLAGS, name)


def check_absl(module, argvs):
  errors = []

  def fake_run(main, argv=None, **kwargs):
    del main, argv, kwargs
    fl = flags.FLAGS
    for args in argvs:
      fl.unparse_flags()
      for name in list(fl):
        if name.startswith("config."):
          delattr(fl, name)
      sys.argv = [module] + list(args)      # ml_collections reads overrides from sys.argv
      try:
        fl(sys.argv)
        fl.validate_all_flags()
        errors.append("")
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f"{type(e).__name__}: {e}")
    raise _Parsed()

  _reset_flags()
  app.run = fake_run
  sys.argv = [module]
  try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
  except _Parsed:
    pass
  if len(errors) != len(argvs):
    errors += [f"{module} did not reach absl.app.run"] * (len(argvs) - len(errors))
  return errors


def check_argparse(script, argvs):
  errors = []
  original = argparse.ArgumentParser.parse_args

  def parse_args(self, args=None, namespace=None):
    original(self, args, namespace)
    raise _Parsed()

  argparse.ArgumentParser.parse_args = parse_args
  try:
    for args in argvs:
      sys.argv = [script] + list(args)
      err = io.StringIO()
      try:
        with contextlib.redirect_stderr(err):
          runpy.run_path(script, run_name="__main__")
        errors.append(f"{script} returned without parsing its arguments")
      except _Parsed:
        errors.append("")
      except SystemExit as e:
        errors.append(f"exit {e.code}: {err.getvalue().strip()[-400:]}")
  finally:
    argparse.ArgumentParser.parse_args = original
  return errors


def main():
  todo = json.load(sys.stdin)
  by_target = {}
  for i, cmd in enumerate(todo):
    by_target.setdefault(cmd["target"], []).append(i)
  results = [""] * len(todo)
  for target, idx in by_target.items():
    argvs = [todo[i]["args"] for i in idx]
    try:
      if target.endswith(".py"):
        errs = check_argparse(target, argvs)
      else:
        errs = check_absl(target, argvs)
    except BaseException as e:  # pylint: disable=broad-except
      errs = [f"{target} failed to load: {type(e).__name__}: {e}"] * len(argvs)
    for i, e in zip(idx, errs):
      results[i] = e
  sys.stdout.flush()
  print("\n@@RESULTS@@" + json.dumps(results))


if __name__ == "__main__":
  main()
