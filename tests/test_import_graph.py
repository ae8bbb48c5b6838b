"""Module boundaries, read from the source with ast (nothing is imported).

- ``reid`` is the lower layer: no module of it imports ``fdgan``;
- the model modules (``reid/models/*``, ``fdgan/networks.py``, ``fdgan/model.py``,
  ``fdgan/losses.py``) do not reach ``reid.pipelines``, directly or through other project modules;
- the floors at the bottom import nothing above them: ``reid.utils`` only itself and
  ``reid.errors``, ``reid.evaluation_metrics`` only those and itself;
- ``baseline.py`` (Stage I) reaches no ``fdgan`` module, while ``train.py`` does.
"""
from __future__ import annotations

import ast
import os
from typing import Dict, List, Set

from tests.conftest import REPO_ROOT

PACKAGES = ("reid", "fdgan")
MODEL_MODULES = ("reid.models", "fdgan.networks", "fdgan.model", "fdgan.losses")
CLI_MODULES = ("baseline", "train", "options", "run_options")
# Each floor and the project modules it may import (besides the package ``reid`` around it).
FLOORS = {
    "reid.utils": ("reid.utils", "reid.errors"),
    "reid.evaluation_metrics": ("reid.evaluation_metrics", "reid.utils", "reid.errors"),
}


def library_modules() -> Dict[str, str]:
    """Dotted module name -> file, for every .py file of the library packages."""
    found = {}
    for package in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(REPO_ROOT, package)):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
            for name in filenames:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, name), REPO_ROOT)[:-3]
                    parts = rel.split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    found[".".join(parts)] = os.path.join(dirpath, name)
    return found


def imported_names(module: str, path: str) -> Set[str]:
    """Every module name ``path`` imports (anywhere in the file), relative imports resolved."""
    is_package = path.endswith("__init__.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)  # 'from pkg import module'
    return names


def project_edges(modules: Dict[str, str]) -> Dict[str, Set[str]]:
    """Module -> the project modules it imports, with the packages around each (Python runs them)."""
    edges = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(module, path):
            parts = name.split(".")
            for k in range(1, len(parts) + 1):
                prefix = ".".join(parts[:k])
                if prefix in modules:
                    targets.add(prefix)
        edges[module] = targets - {module}
    return edges


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def with_cli_modules(modules: Dict[str, str]) -> Dict[str, str]:
    """``modules`` plus the top-level scripts and option modules of the two CLIs."""
    found = dict(modules)
    for name in CLI_MODULES:
        found[name] = os.path.join(REPO_ROOT, name + ".py")
    return found


def reached(edges: Dict[str, Set[str]], start: str) -> Dict[str, List[str]]:
    """Every module ``start`` reaches through ``edges`` -> one import chain leading to it."""
    seen = {start: [start]}
    queue = [start]
    while queue:
        current = queue.pop(0)
        for nxt in sorted(edges[current]):
            if nxt not in seen:
                seen[nxt] = seen[current] + [nxt]
                queue.append(nxt)
    return seen


def climbing_imports(edges: Dict[str, Set[str]]) -> List[str]:
    """The imports of a module of a floor in :data:`FLOORS` that leave what the floor may import."""
    return sorted(
        f"{module} imports {target}"
        for module, targets in edges.items()
        for floor, allowed in FLOORS.items() if within(module, floor)
        for target in targets if target != "reid" and not any(within(target, a) for a in allowed)
    )


def test_the_walk_finds_the_library() -> None:
    modules = library_modules()
    assert {"reid.models.loading", "reid.pipelines.common", "fdgan.model", "reid.utils.html"} <= set(modules)
    # the parser sees what a module imports (a known edge)
    assert "reid.models" in project_edges(modules)["fdgan.model"]


def test_reid_does_not_import_fdgan() -> None:
    modules = library_modules()
    offenders = sorted(
        f"{module} imports {name}"
        for module, path in modules.items() if within(module, "reid")
        for name in imported_names(module, path) if within(name, "fdgan")
    )
    assert offenders == []


def test_model_modules_do_not_reach_the_pipelines() -> None:
    modules = library_modules()
    edges = project_edges(modules)
    offenders: List[str] = []
    for start in sorted(m for m in modules if any(within(m, p) for p in MODEL_MODULES)):
        offenders += [" -> ".join(chain) for m, chain in reached(edges, start).items() if within(m, "reid.pipelines")]
    assert offenders == []


def test_utils_and_metrics_import_nothing_above_them() -> None:
    edges = project_edges(library_modules())
    assert {"reid.utils.osutils", "reid.evaluation_metrics.fast_ranking"} <= set(edges)
    assert climbing_imports(edges) == []
    # The rule catches a climb (k-reciprocal re-ranking uses the evaluators' distances).
    assert "reid.evaluators" in edges["reid.reranking"]
    moved_back = dict(edges, **{"reid.utils.rerank": edges["reid.reranking"]})
    assert climbing_imports(moved_back) == ["reid.utils.rerank imports reid.evaluators"]


def test_baseline_does_not_load_fdgan() -> None:
    modules = with_cli_modules(library_modules())
    edges = project_edges(modules)
    fdgan_from = {start: [" -> ".join(chain) for m, chain in reached(edges, start).items() if within(m, "fdgan")]
                  for start in ("baseline", "train")}
    assert fdgan_from["baseline"] == []
    # The walk does follow the CLIs' imports: train.py reaches fdgan, also through options.py.
    assert any(chain.startswith("train -> options -> fdgan") for chain in fdgan_from["train"])
