"""Sphinx configuration of the argmin-layers documentation (``make docs``)."""

import os
import sys

# The repository root first, so that autodoc documents this checkout's packages.
sys.path.insert(0, os.path.abspath(".."))

project = "argmin-layers"
author = "argmin-layers contributors"
copyright = "argmin-layers contributors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: $...$ and $$...$$ math, \begin{align} environments, ::: fences.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# Google-style docstrings.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# The house docstrings have a "Shape:" section (as torch.nn does).
napoleon_custom_sections = ["Shape"]
autodoc_member_order = "bysource"
# torch.autograd.Function and nn.Module docstrings are not ours (and cite labels of torch's docs).
autodoc_inherit_docstrings = False
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
autosummary_generate = False

# Repository files linked from the pages (examples, benchmarks) are not part of the site.
suppress_warnings = ["myst.xref_missing"]

html_theme = "furo"
html_title = "argmin-layers"
# MathJax is loaded by the reader's browser; the build itself needs no network.
