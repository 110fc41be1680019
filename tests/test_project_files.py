"""What a new user meets before any code runs: set-up that lets them choose torch's wheel index, the
licence and citation files, and docstrings that the docs site renders (issue 16, items 6, 9, 10)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROLE = re.compile(r":(?:py:)?(class|func|mod|meth|data|attr|obj|exc|const):`")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_setup_installs_torch_from_the_chosen_index():
    def dry_run(*args: str) -> str:
        # -B: as if nothing were installed; -n: print the commands without running them.
        out = subprocess.run(["make", "-n", "-B", "setup", *args], cwd=ROOT, capture_output=True, text=True,
                             check=True)
        return out.stdout

    plain = dry_run()
    assert "torch==2.13.0" in plain and "--index-url" not in plain
    chosen = dry_run("TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in chosen


def test_licence_changelog_and_citation():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    licence = (ROOT / "LICENSE").read_text()
    assert meta["license"]["text"] == "MIT" and licence.startswith("MIT License")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT" and cff["version"] == meta["version"]
    assert cff["title"] and cff["authors"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {meta['version']}" in changelog or f"[{meta['version']}]" in changelog
    readme = (ROOT / "README.md").read_text()
    assert meta["requires-python"].lstrip(">=") in readme


def test_docstrings_carry_no_sphinx_roles():
    """mkdocstrings renders Markdown, so ``:class:`X``` showed literally in the built site."""
    found = []
    for package in ("solvers", "nde", "pinn", "quadrature"):
        for path in (ROOT / package).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if ROLE.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}")
    assert not found, found
