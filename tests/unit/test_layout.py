"""The house rules of docs/design.md ("Imports run one way"), read from every module's imports: a room imports
only rooms to its right, the product never imports the lab, errors imports nothing of the package, and
llama/build.py (run as a script before the package is installed) needs the standard library only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "topv_edge"
# rank of each room: a module may import modules of its own rank or lower
RANKS = {"errors": 0, "demo": 1, "hub": 1, "pruning": 1, "options": 2, "llama": 3, "session": 4, "handler": 4, "cli": 5,
         "chat": 6, "eval": 6, "viz": 6, "lab": 7}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """The topv_edge modules `path` imports, anywhere in it (function-level imports count too)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m == "topv_edge" or m.startswith("topv_edge.")}


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANKS else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_run_one_way(path: Path) -> None:
    own = room(module_name(path))
    assert own is not None, f"{module_name(path)} is in no room of docs/design.md"
    for target in imported_modules(path):
        other = room(target)
        if other is None:  # the package itself or a name imported from it
            continue
        assert RANKS[other] <= RANKS[own], f"{module_name(path)} imports {target}: {other} is left of {own}"
        assert other != "lab" or own == "lab", f"the product module {module_name(path)} imports the lab ({target})"


def test_errors_imports_nothing_of_the_package() -> None:
    assert imported_modules(PACKAGE / "errors.py") == set()


def test_the_build_locator_needs_the_standard_library_only() -> None:
    tree = ast.parse((PACKAGE / "llama" / "build.py").read_text())
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    assert top <= set(sys.stdlib_module_names) | {"__future__"}, top - set(sys.stdlib_module_names)


def test_importing_the_package_loads_neither_numba_nor_llama_cpp() -> None:
    import subprocess

    code = "import sys, topv_edge; print('numba' in sys.modules, 'llama_cpp' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=PACKAGE.parent)
    assert r.stdout.split() == ["False", "False"]
