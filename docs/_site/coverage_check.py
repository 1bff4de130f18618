"""Checks that the README split (issue 31) lost nothing: every table row, code line, sentence and
number of the old README.md lives on in README.md + docs/.

    python docs/_site/coverage_check.py [--old=REV]   # REV: the commit of the long README

Prints, per kind, how many items of the old README appear verbatim (whitespace-normalised) in
the new pages, and lists every item that does not, with the numbers in it that appear nowhere in
the new pages. Exit status 1 if a table row, an image or a number is missing (reworded sentences and code
lines are listed for a reviewer, with any number of theirs that is gone).
"""

import argparse
import glob
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\([^)]*\)")
NUMBER = re.compile(r"(?<![\w.])[-−+]?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?%?")


def norm(s):
  return re.sub(r"\s+", " ", s).strip()


def strip_links(s):
  """Links change when text moves between pages (compare each as "[link]"), and a bold lead-in
  ("**Format.** ...") may have become the section's heading: compare what follows it."""
  return re.sub(r"^\*\*[^*]+\*\*\s*", "", LINK.sub("[link]", s.strip()))


def split(text):
  """(table rows, code lines, sentences, images) of a markdown text."""
  rows, code, paragraphs, images, in_code = [], [], [[]], [], False
  for line in text.splitlines():
    s = line.strip()
    if s.startswith("```"):
      in_code = not in_code
      continue
    if in_code or (line.startswith("    ") and not paragraphs[-1]):
      if s:
        code.append(s)
    elif s.startswith("|"):
      if not re.fullmatch(r"[|\-: ]+", s):
        rows.append(s)
    elif s.startswith("![") or s.startswith("#") or not s:
      images += re.findall(r"!\[[^\]]*\]\(([^)]+)\)", s)
      paragraphs.append([])
    else:
      paragraphs[-1].append(s)
  sentences = []
  for par in paragraphs:
    sentences += re.split(r"(?<=[.;!?])\s+(?=[A-Z(`*\[])", norm(" ".join(par)))
  return rows, code, [x for x in sentences if len(x) > 3], images


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--old", default="1f50e48", help="commit holding the long README.md")
  args = parser.parse_args()
  old = subprocess.run(["git", "show", f"{args.old}:README.md"], cwd=REPO, check=True,
                       capture_output=True, text=True).stdout
  pages = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(
      os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
  texts = [open(os.path.join(REPO, p), encoding="utf-8").read() for p in pages]
  new = "\n".join(texts)
  new_numbers = set(NUMBER.findall(new))
  o_rows, o_code, o_sent, o_images = split(old)
  new_images = {os.path.normpath(os.path.join(os.path.dirname(p), i))
                for p, text in zip(pages, texts) for i in split(text)[3]}
  lost_images = [i for i in o_images if os.path.normpath(i) not in new_images]
  print(f"images: {len(o_images) - len(lost_images)} of {len(o_images)} shown"
        + (f"; missing: {lost_images}" if lost_images else ""))
  failed = bool(lost_images)
  new_flat = norm(LINK.sub("[link]", new))
  for kind, items, strict in (("table rows", o_rows, True), ("code lines", o_code, False),
                              ("sentences", o_sent, False)):
    missing = [x for x in items if norm(strip_links(x)) not in new_flat]
    print(f"{kind}: {len(items) - len(missing)} of {len(items)} verbatim")
    for x in missing:
      lost = [n for n in NUMBER.findall(x) if n not in new_numbers]
      print(f"  NOT VERBATIM: {x}" + (f"\n    numbers nowhere in the new pages: {lost}" if lost else ""))
      failed |= strict or bool(lost)
  old_numbers = set(NUMBER.findall(old))
  lost = sorted(old_numbers - new_numbers)
  print(f"numbers: {len(old_numbers) - len(lost)} of {len(old_numbers)} distinct numbers present"
        + (f"; missing: {lost}" if lost else ""))
  sys.exit(1 if failed or lost else 0)


if __name__ == "__main__":
  main()
