"""Runs the documentation's Python examples for tests/test_docs.py, in one process.

Reads [[code, ...], ...] (each inner list a chain: a block and the blocks that continue it) as
JSON on stdin; runs each chain in a fresh namespace and a fresh temporary working directory;
prints one JSON list with "" or the traceback per chain. tests/test_docs.py starts this process
with XLA's backend optimisation off: the examples check behaviour, not speed, and compiling them
unoptimised takes about 40% less CPU time.
"""

import contextlib
import io
import json
import os
import sys
import tempfile
import traceback


def main():
  chains = json.load(sys.stdin)
  results = []
  for chain in chains:
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
      os.chdir(tmp)
      namespace = {"__name__": "__doc_example__"}
      try:
        with contextlib.redirect_stdout(io.StringIO()):
          for name, code in chain:
            exec(compile(code, name, "exec"), namespace)  # pylint: disable=exec-used
        results.append("")
      except BaseException:  # pylint: disable=broad-except
        results.append(traceback.format_exc(limit=-4))
      finally:
        os.chdir(cwd)
  print("\n@@RESULTS@@" + json.dumps(results))


if __name__ == "__main__":
  main()
