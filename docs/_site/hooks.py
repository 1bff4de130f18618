"""MkDocs hooks for pgf's documentation site (mkdocs.yml `hooks:`).

1. Repository files outside docs/ (result plots, tables, configs) are linked from the pages with
   paths that work on GitHub (`../../experiments/results/vit_digits/noise.png`). The site copies
   every such file that exists under `repo/<path>` and rewrites the link; a link to a file that
   does not exist is left alone, so the strict build reports it.
2. `<!-- pgf-api: PACKAGE -->` in a page becomes one mkdocstrings `::: module` block for every
   module of PACKAGE (found on disk, so a module that moves or appears is documented without
   editing the page). `<!-- pgf-api: rest -->` is every pgf module no other API page lists.
"""

from __future__ import annotations

import os
import posixpath
import re

from mkdocs.structure.files import File, InclusionLevel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(REPO, "docs")
PREFIX = "repo"
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s#]+)(#[^)\s]*)?(\))")
API = re.compile(r"^<!--\s*pgf-api:\s*([\w.]+)\s*-->\s*$", re.M)
FENCE = re.compile(r"^(```|~~~)")


def _outside_links(src_uri: str, markdown: str):
  """(link, repo-relative path) for relative links of a page that leave docs/."""
  in_code = False
  for line in markdown.splitlines():
    if FENCE.match(line.strip()):
      in_code = not in_code
      continue
    if in_code:
      continue
    for m in LINK.finditer(line):
      target = m.group(2)
      if re.match(r"^[a-z]+:", target) or target.startswith("/"):
        continue
      path = posixpath.normpath(posixpath.join("docs", posixpath.dirname(src_uri), target))
      if not path.startswith("docs/") and not path.startswith(".."):
        yield target, path


def on_files(files, config):
  wanted = set()
  for f in list(files.documentation_pages()):
    with open(f.abs_src_path, encoding="utf-8") as fh:
      for _, path in _outside_links(f.src_uri, fh.read()):
        if os.path.isfile(os.path.join(REPO, path)):
          wanted.add(path)
  for path in sorted(wanted):
    f = File.generated(config, f"{PREFIX}/{path}", abs_src_path=os.path.join(REPO, path))
    if f.is_documentation_page():
      f.inclusion = InclusionLevel.NOT_IN_NAV
    files.append(f)
  return files


def _modules(package: str) -> list[str]:
  root = os.path.join(REPO, *package.split("."))
  if os.path.isfile(root + ".py"):
    return [package]
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
    rel = os.path.relpath(dirpath, REPO).replace(os.sep, ".")
    for name in sorted(filenames):
      if not name.endswith(".py") or name == "__main__.py":
        continue
      out.append(rel if name == "__init__.py" else f"{rel}.{name[:-3]}")
  return out


def _listed_elsewhere(config) -> set[str]:
  listed = set()
  for dirpath, _, filenames in os.walk(os.path.join(DOCS, "api")):
    for name in filenames:
      with open(os.path.join(dirpath, name), encoding="utf-8") as fh:
        text = fh.read()
      for pkg in API.findall(text):
        if pkg != "rest":
          listed.update(_modules(pkg))
      listed.update(re.findall(r"^:::\s*([\w.]+)", text, flags=re.M))
  return listed


def on_page_markdown(markdown, page, config, files):
  src_uri = page.file.src_uri
  for target, path in set(_outside_links(src_uri, markdown)):
    if files.get_file_from_path(f"{PREFIX}/{path}") is None:
      continue
    new = posixpath.relpath(f"{PREFIX}/{path}", posixpath.dirname(src_uri) or ".")
    markdown = markdown.replace(f"]({target})", f"]({new})").replace(f"]({target}#", f"]({new}#")

  def api(m):
    pkg = m.group(1)
    if pkg == "rest":
      listed = _listed_elsewhere(config)
      mods = [x for x in _modules("pgf") if x not in listed and x != "pgf"]
    else:
      mods = _modules(pkg)
    return "\n\n".join(f"::: {mod}" for mod in mods)

  return API.sub(api, markdown) if src_uri.startswith("api/") else markdown
