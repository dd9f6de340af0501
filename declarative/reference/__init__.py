"""cvxpy reference builders, used by tests, examples and benchmarks — never by a forward or
backward pass. Import the submodules directly (``from declarative.reference.qp import ...``);
they import cvxpy lazily so that ``import declarative`` does not need it."""

__all__: list[str] = []
