"""The package's layers: no import circles, every module importable alone, no borrowed underscore names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import bayespeft

PACKAGE = Path(bayespeft.__file__).parent
ROOT = Path(__file__).resolve().parents[1]
#: Heavy third-party packages the import check loads once before forking a fresh child per module.
PRELOADED = ("torch", "transformers", "peft", "accelerate", "datasets", "matplotlib.pyplot", "optuna")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py"))


def imports_of(module: str) -> list[tuple[str, list[str]]]:
    """``(imported module, names)`` for every import inside the package (also those inside functions)."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((target, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return [(target, names) for target, names in found if target.split(".")[0] == "bayespeft"]


def edges(module: str) -> set[str]:
    """The package modules ``module`` imports: ``from pkg import sub`` counts as importing ``pkg.sub``."""
    out = set()
    for target, names in imports_of(module):
        subs = [f"{target}.{name}" for name in names if f"{target}.{name}" in MODULES]
        out.update(subs or [target])
        if len(subs) < len(names):
            out.add(target)
    out.discard(module)
    return out


def test_no_import_circles():
    graph = {module: edges(module) for module in MODULES}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import circle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            if target != "bayespeft":  # the package itself: importing any module runs it first anyway
                visit(target, [*path, module])
        done.add(module)

    for module in MODULES:
        visit(module, [])


def test_config_does_not_import_methods():
    assert not any(t.startswith("bayespeft.methods") for t in edges("bayespeft.config"))


def test_no_module_borrows_another_modules_underscore_names():
    borrowed = {
        (module, name)
        for module in MODULES
        for target, names in imports_of(module)
        for name in names
        if name.startswith("_") and not name.startswith("__") and target != module
    }
    assert not borrowed, sorted(borrowed)


def test_scripts_use_only_public_names():
    """Benchmarks and examples import no underscore name of the package either."""
    borrowed = [
        f"{path}: {node.module}.{alias.name}"
        for path in sorted([*ROOT.glob("benchmarks/**/*.py"), *ROOT.glob("examples/**/*.py")])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "bayespeft"
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not borrowed, borrowed


IMPORT_EACH = """
import importlib, os, sys, traceback
for package in sys.argv[1].split(","):
    importlib.import_module(package)
failed = []
for name in sys.argv[2].split(","):
    pid = os.fork()
    if pid == 0:  # a child whose bayespeft modules are all unimported: this module comes first
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1]:
        failed.append(name)
print("failed:", ",".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone():
    """Each module imported first in a fresh process (forked after the third-party packages load) works."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH, ",".join(PRELOADED), ",".join(MODULES)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-500:] + result.stderr[-3000:]
