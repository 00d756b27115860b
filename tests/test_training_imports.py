"""The training package has no import cycle: loaders and recipes are siblings composed by the entry point.

The import graph is read with ``ast`` from every ``pumpl_assets/core/training/*.py`` (imports at
any depth, including those inside functions and ``TYPE_CHECKING`` blocks, count), then each
module is imported alone in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = "pumpl_assets.core.training"
PKG_DIR = Path(__file__).resolve().parents[1] / "pumpl_assets" / "core" / "training"
MODULES = sorted(p.stem for p in PKG_DIR.glob("*.py"))


def _edges(module: str) -> set[str]:
    """Training modules that ``module`` imports (``__init__`` for names taken from the package)."""
    tree = ast.parse((PKG_DIR / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PKG + "."):
                    out.add(alias.name[len(PKG) + 1 :].split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            # relative (from . import x / from .x import y) or absolute
            relative = PKG + ("." + node.module if node.module else "")
            target = relative if node.level else node.module or ""
            if target == PKG:
                for alias in node.names:
                    out.add(alias.name if alias.name in MODULES else "__init__")
            elif target.startswith(PKG + "."):
                out.add(target[len(PKG) + 1 :].split(".")[0])
    out.discard(module)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.unit
def test_training_import_graph_is_acyclic_and_layered() -> None:
    graph = {m: _edges(m) for m in MODULES}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"
    assert graph["base"] == set(), "base is the shared leaf"
    assert graph["__init__"] == set(), "the package imports no submodule eagerly"
    loaders, recipes = {"model_peft", "model_unsloth"}, {"recipe_plain", "recipe_sft"}
    for m in loaders | recipes:
        assert not graph[m] & (loaders | recipes | {"run"}), f"{m} imports a sibling: {graph[m]}"
    assert loaders | recipes <= graph["run"], "the entry point composes every loader and recipe"
    # The checker itself sees a cycle when there is one.
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.unit
def test_each_training_module_imports_alone() -> None:
    """Every module imports in a fresh interpreter; the light ones pull in no transformers/peft."""
    light = {"__init__", "base", "gates", "job", "run"}
    code = "\n".join(
        [
            "import importlib, json, sys",
            f"name = {PKG!r} if sys.argv[1] == '__init__' else {PKG!r} + '.' + sys.argv[1]",
            "importlib.import_module(name)",
            "print(json.dumps(sorted(m for m in ('transformers', 'peft', 'trl', 'unsloth') if m in sys.modules)))",
        ]
    )
    for module in MODULES:
        if module == "model_unsloth":
            continue  # imports nothing heavy at module level either, but importing unsloth's package is optional
        proc = subprocess.run(
            [sys.executable, "-c", code, module], capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 0, f"{module}: {proc.stderr[-2000:]}"
        heavy = proc.stdout.strip().splitlines()[-1]
        if module in light:
            assert heavy == "[]", f"importing {module} pulled in {heavy}"
