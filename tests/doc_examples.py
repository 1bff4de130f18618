"""Collects what README.md and docs/ show a reader, for tests/test_docs.py.

* Fenced code blocks: ```python blocks are run (each in a fresh namespace, unless the line
  before the fence is `<!-- doctest: continue -->`, which runs it after the page's previous
  block, in that block's namespace), or only compiled where the line before the fence is
  `<!-- doctest: compile-only: <why> -->` (an accelerator, a download, a cluster). ```bash blocks
  are syntax-checked with `bash -n`.
* Commands: every `python -m pgf...` and `python experiments/<script>.py` in a code block (any
  but python) or an inline code span, with its arguments, so the test can parse them with the real flag
  definitions.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIRECTIVE = re.compile(r"^\s*<!--\s*doctest:\s*(compile-only|continue)\s*(?::\s*(.*?))?\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
COMMAND = re.compile(r"python3?\s+(?:-m\s+(pgf(?:\.\w+)*)|(experiments/\w+\.py))((?:\s+[^\s\"'`>&|;#]+)*)")


def doc_files() -> list[str]:
  """README.md and every page under docs/ (repo-relative), sorted."""
  pages = sorted(glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
  pages = [p for p in pages if "/_site/" not in p]
  return ["README.md"] + [os.path.relpath(p, REPO) for p in pages]


@dataclasses.dataclass
class Block:
  path: str          # repo-relative file
  line: int          # 1-based line of the opening fence
  lang: str
  code: str
  directive: str     # "run", "compile-only" or "continue"
  reason: str = ""

  @property
  def id(self) -> str:
    return f"{self.path}:{self.line}"


def blocks(path: str) -> list[Block]:
  """Fenced code blocks of one file, with the doctest directive before each."""
  with open(os.path.join(REPO, path), encoding="utf-8") as f:
    lines = f.read().splitlines()
  out, i = [], 0
  while i < len(lines):
    m = FENCE.match(lines[i])
    if not m:
      i += 1
      continue
    indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
    j = i + 1
    body = []
    while j < len(lines) and not lines[j].strip().startswith(fence[:3]):
      line = lines[j]
      body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
      j += 1
    prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
    d = DIRECTIVE.match(prev)
    out.append(Block(path, i + 1, lang, "\n".join(body) + "\n", d.group(1) if d else "run",
                     (d.group(2) or "") if d else ""))
    i = j + 1
  return out


def all_blocks() -> list[Block]:
  return [b for p in doc_files() for b in blocks(p)]


def _logical_lines(code: str) -> list[str]:
  """Joins backslash continuations (also inside quoted multi-line strings)."""
  return re.sub(r"\\\n\s*", " ", code).splitlines()


def _inline_spans(path: str) -> list[str]:
  with open(os.path.join(REPO, path), encoding="utf-8") as f:
    text = f.read()
  text = re.sub(r"^\s*(```|~~~).*?^\s*(```|~~~)", "", text, flags=re.S | re.M)
  return re.findall(r"`([^`\n]+)`", text.replace("`\n", "` ").replace("\n", " "))


@dataclasses.dataclass
class Command:
  where: str         # file:line (or file for inline spans)
  text: str          # the command as shown
  target: str        # "pgf.main" or "experiments/sweep.py"
  args: list

  @property
  def id(self) -> str:
    return f"{self.where} {self.text[:70]}"


def _substitute(arg: str) -> str:
  """Shell variables become a placeholder value that every flag type accepts."""
  return re.sub(r"\\?\$\{?\w+\}?", "0", arg)


def commands() -> list[Command]:
  """Every pgf / experiments command a page shows, in code blocks and inline code."""
  out = []
  for path in doc_files():
    sources = [(f"{path}:{b.line}", b.code) for b in blocks(path)
               if b.lang in ("bash", "sh", "shell", "console", "text", "")]
    sources += [(path, span) for span in _inline_spans(path)]
    for where, code in sources:
      for line in _logical_lines(code):
        for m in COMMAND.finditer(line):
          target = m.group(1) or m.group(2)
          args = [_substitute(a) for a in m.group(3).split()]
          out.append(Command(where, m.group(0).strip(), target, args))
  return out
