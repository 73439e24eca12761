"""The dependency direction of ARCHITECTURE.md, checked on the source with `ast` (every import,
inside functions too): each package imports only the packages below it, `model` knows nothing of
gin, `laws` nothing of ours and no JAX / TensorFlow, and no two packages import each other."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# package -> the packages of ours it may import (besides itself), lowest first.
ALLOWED = {
    "model": set(),
    "laws": set(),
    "data": set(),
    "checkpoints": {"model"},
    "eval": {"model", "data", "checkpoints"},
    "train": {"model", "data", "checkpoints", "eval"},
    "finetune": {"model", "data", "checkpoints", "eval", "train"},
    "study": {"model", "data", "checkpoints", "eval", "train", "finetune", "laws"},
}
FORBIDDEN_THIRD_PARTY = {
    "model": {"gin"},
    "laws": {"jax", "jaxlib", "flax", "optax", "orbax", "tensorflow", "seqio", "torch"},
}


def imports_of(package: str, root: Path = REPO) -> dict[str, set[str]]:
    """{file: top-level names it imports} for every module of `package` (relative imports count as itself)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names.add(package if node.level else (node.module or "").split(".")[0])
        out[str(path.relative_to(root))] = names
    return out


GRAPH = {package: imports_of(package) for package in ALLOWED}


def test_every_package_is_checked():
    packages = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED), f"add new packages to ALLOWED (and ARCHITECTURE.md): {packages ^ set(ALLOWED)}"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_is_below_it(package):
    ours = set(ALLOWED)
    bad = {file: sorted(names & ours - ALLOWED[package] - {package}) for file, names in GRAPH[package].items()}
    bad = {file: names for file, names in bad.items() if names}
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])} of ours: {bad}"
    banned = FORBIDDEN_THIRD_PARTY.get(package, set())
    bad = {file: sorted(names & banned) for file, names in GRAPH[package].items() if names & banned}
    assert not bad, f"{package} must not import {sorted(banned)}: {bad}"


def test_no_cycles_between_packages():
    edges = {p: set().union(*GRAPH[p].values()) & set(ALLOWED) - {p} for p in ALLOWED}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            assert state.get(nxt) != "open", f"import cycle: {' -> '.join(path + [nxt])}"
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for package in sorted(edges):
        if package not in state:
            visit(package, [package])


def test_the_check_sees_a_violation(tmp_path):
    """The parser catches imports inside functions and relative imports (so a leak cannot hide there)."""
    module = tmp_path / "model" / "leak.py"
    module.parent.mkdir()
    module.write_text("from . import layers\ndef f():\n    from train.trainer import train\n    import gin.config\n")
    assert imports_of("model", root=tmp_path) == {"model/leak.py": {"model", "train", "gin"}}
