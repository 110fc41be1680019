"""Every Python code block of the documentation runs (issue 16, item 8).

Conventions for ``docs/*.md`` and ``README.md`` (writers of docs: read this):

* A fenced block opened with ```` ```python ```` is runnable code. The blocks of one page run in order in
  one fresh namespace, so a block may use the names that earlier blocks of the same page defined. Each
  page starts from an empty namespace: a page never depends on another page.
* A block that is deliberately not runnable (a signature, pseudo-code, a shape sketch, an excerpt of a
  longer script) is fenced as ```` ```text ```` (or any language other than ``python``); it is not run.
* A block that takes more than a few seconds is preceded by the HTML comment ``<!-- slow -->`` (on the
  line just above the fence, blank lines allowed). ``make test`` runs each page's blocks up to its first
  slow block; ``make test-all`` (``-m slow``) runs the whole page.
* Fast blocks should take < ~3 s each on one core: shrink sizes, iterations and epochs in the docs (say
  in the text what the full-size run is) rather than marking a block slow.

Blocks run in a fresh temporary directory as the working directory (so a block that writes a checkpoint
or a figure leaves nothing in the repository), with matplotlib's Agg backend.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[^\s`{]*)[^\n]*$")
_SLOW = re.compile(r"<!--\s*slow\s*-->")


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """The ```python blocks of a markdown text: (first line number, code, marked slow)."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, indent = m.group("fence"), m.group("lang").lower(), len(m.group("indent"))
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1
        if lang != "python":
            continue
        j = start - 1
        while j >= 0 and lines[j].strip() == "":
            j -= 1
        slow = j >= 0 and bool(_SLOW.search(lines[j]))
        blocks.append((start + 1, "\n".join(body) + "\n", slow))
    return blocks


def _cases():
    for page in PAGES:
        blocks = python_blocks(page.read_text())
        if not blocks:
            continue
        name = page.relative_to(ROOT).as_posix()
        n_fast = next((k for k, b in enumerate(blocks) if b[2]), len(blocks))
        if n_fast:
            yield pytest.param(page, blocks[:n_fast], id=f"{name}-fast")
        if n_fast < len(blocks):
            yield pytest.param(page, blocks, id=f"{name}-all", marks=pytest.mark.slow)


def _run_page(page: Path, blocks, tmp_path: Path) -> list[tuple[int, float]]:
    import matplotlib

    matplotlib.use("Agg")
    namespace = {"__name__": f"docs_{page.stem}"}
    times = []
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for line, code, _ in blocks:
            t0 = time.perf_counter()
            try:
                exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
            except Exception as exc:  # name the block in the failure
                raise AssertionError(f"{page.relative_to(ROOT)}, block at line {line} failed: "
                                     f"{type(exc).__name__}: {exc}") from exc
            times.append((line, time.perf_counter() - t0))
    finally:
        os.chdir(cwd)
        import matplotlib.pyplot as plt

        plt.close("all")
    return times


def test_collector_finds_blocks_and_markers():
    text = "a\n\n```python\nx = 1\n```\n\n<!-- slow -->\n\n```python\ny = x\n```\n```text\nnot run\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n", False), (9, "y = x\n", True)]


@pytest.mark.parametrize(("page", "blocks"), list(_cases()))
def test_docs_python_blocks_run(page, blocks, tmp_path):
    times = _run_page(page, blocks, tmp_path)
    for line, seconds in times:
        print(f"{page.name}:{line}: {seconds:.2f} s")
