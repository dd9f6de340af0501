"""The public surface: each package's ``__all__`` lists names that exist and are documented, holds no
internals, and every package carries the one ``__version__``."""

import importlib
import re
import tomllib
from pathlib import Path

import pytest

import contrastive
import declarative
import layers

PACKAGES = ["declarative", "contrastive", "layers", "declarative.qp", "declarative.lasso",
            "declarative.activations"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist_are_public_and_documented(name):
    module = importlib.import_module(name)
    assert len(module.__all__) == len(set(module.__all__))
    for attr in module.__all__:
        obj = getattr(module, attr)
        if attr == "__version__":
            continue
        assert not attr.startswith("_"), attr
        assert (getattr(obj, "__doc__", None) or "").strip(), f"{name}.{attr} has no docstring"


def test_internals_are_not_in_the_package_namespaces():
    for internal in ("ArgminFunction", "apply_argmin_function", "sum_to_shape", "check_beta"):
        assert internal not in declarative.__all__ and not hasattr(declarative, internal), internal
    for internal in ("ep_stencil", "forward_difference_coefficients"):
        assert internal not in contrastive.__all__ and not hasattr(contrastive, internal), internal
    # still reachable through their submodules
    from contrastive.finite_difference import ep_stencil  # noqa: F401
    from declarative.argmin_function import ArgminFunction  # noqa: F401
    from declarative.broadcasting import sum_to_shape  # noqa: F401


def test_one_version_everywhere():
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", declarative.__version__)
    assert contrastive.__version__ == layers.__version__ == declarative.__version__
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "declarative._version.__version__"}


def test_exception_policy_is_written_down():
    from declarative import errors

    doc = errors.__doc__
    for name in ("TypeError", "ValueError", "SolverError"):
        assert name in doc
    assert issubclass(declarative.SolverError, RuntimeError)
