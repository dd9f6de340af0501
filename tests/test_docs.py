"""The documentation site builds with warnings as errors, and its runnable snippets run.

The build is what ``make docs`` runs (``sphinx-build -W --keep-going -b html docs ...``), into a
temporary directory; it renders every docstring of the public API through autodoc, so a docstring
that is not valid reStructuredText fails here.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: Pages whose ```python blocks are complete programs (the other pages show fragments).
RUNNABLE_PAGES = ("README.md", "docs/index.md", "docs/guide/getting_started.md")


def _missing_docs_tools() -> list[str]:
    return [m for m in ("sphinx", "myst_parser", "furo") if importlib.util.find_spec(m) is None]


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    missing = _missing_docs_tools()
    if missing:
        pytest.skip(f"the docs build needs {', '.join(missing)}: install the 'docs' extra "
                    "(pip install -e '.[docs]', or `make docs`)")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS),
         str(tmp_path / "html"), "-d", str(tmp_path / "doctrees")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    html = tmp_path / "html"
    # the pages, the API reference (autodoc ran) and the example figures are there
    assert (html / "guide" / "modes.html").is_file()
    api = (html / "reference" / "declarative.html").read_text()
    assert "QPProblem" in api and "solve_qp" in api
    assert (html / "_images" / "fenchel_mnist.png").is_file()


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S)


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_docs_snippets_run(page):
    blocks = _python_blocks(page)
    assert blocks, f"{page} has no python snippet"
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page}[{i}]", "exec"), {"__name__": f"docs_snippet_{i}"})


def test_no_reference_to_unshipped_design_notes():
    """Docs and docstrings are self-contained: nothing cites a design document outside the repository."""
    offenders = []
    dirs = ("declarative", "contrastive", "layers", "tests", "examples", "benchmarks")
    for path in list(DOCS.rglob("*.md")) + [ROOT / "README.md"] + [
            p for d in dirs for p in (ROOT / d).rglob("*.py")]:
        if "_build" in path.parts or path == Path(__file__).resolve():
            continue
        if "DESIGN.md" in path.read_text():
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders
