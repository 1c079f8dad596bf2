"""The house rules of src/tlresearch, checked on the source (CONTRIBUTING.md explains them).

* every module imports in a fresh interpreter, all of them in sorted order;
* no import circle between modules, function-level imports included (a circle hidden behind
  a function-level import is still a circle: it only moves the failure to run time);
* layers: a package imports only from its own or a lower layer (the front door -> the runner ->
  the features -> the ground floor);
* no module over 400 lines;
* each Hydra config group's targets live in the package of that group;
* every config key that sets a value has a comment (what it takes; for ``_target_``, the file).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SRC = Path(__file__).resolve().parents[1] / "src"
CONF = Path(__file__).resolve().parents[1] / "conf"
PACKAGE = SRC / "tlresearch"
MAX_LINES = 400

#: The layers, lowest first. A module may import from its own layer's package or any lower
#: layer; within the feature layer a package may import only the packages listed for it (so the
#: feature packages form no circle between them either).
GROUND = {"core"}
FEATURES: dict[str, set[str]] = {
    "finetune": set(),
    "data": set(),
    "checkpoints": {"data"},
    "models": {"data", "finetune", "checkpoints"},
    "protocols": {"data", "models", "finetune", "checkpoints"},
    "imageopt": {"data", "models", "checkpoints"},
    "results": {"data"},
}
RUNNER = {"runner"}
FRONT_DOOR = {"train", "evaluate", "predict", "visualize", "table", "cache", "study"}


def module_paths() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source (functions included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            if candidate in known:
                found.add(candidate)
                break
            # ``from tlresearch.data import images`` imports the module ``tlresearch.data.images``.
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate.startswith("tlresearch"):
                found.add(candidate)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = module_paths()
    return {name: imported_modules(name, path, set(paths)) for name, path in paths.items()}


def area(module: str) -> str:
    """``tlresearch.data.images`` -> ``data``; ``tlresearch.train`` -> ``train``; the package -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer(area_name: str) -> int:
    if area_name in GROUND:
        return 0
    if area_name in FEATURES:
        return 1
    if area_name in RUNNER:
        return 2
    if area_name in FRONT_DOOR:
        return 3
    raise AssertionError(f"tlresearch.{area_name} is in no layer: add it to tests/test_architecture.py and CONTRIBUTING.md")


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(module_paths())
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_find_cycles_sees_a_circle_hidden_behind_a_function_level_import(tmp_path):
    module = tmp_path / "tlresearch" / "a.py"
    module.parent.mkdir()
    module.write_text("import os\n\ndef f():\n    from tlresearch.b import g\n    return g\n")
    assert imported_modules("tlresearch.a", module, {"tlresearch.a", "tlresearch.b"}) == {"tlresearch.b"}
    assert find_cycles({"tlresearch.a": {"tlresearch.b"}, "tlresearch.b": {"tlresearch.a"}}) == [["tlresearch.a", "tlresearch.b"]]
    assert find_cycles({"tlresearch.a": {"tlresearch.b"}, "tlresearch.b": set()}) == []


def test_no_import_circles():
    assert find_cycles(import_graph()) == []


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for module, imports in import_graph().items():
        here = area(module)
        if not here:
            continue
        for imported in imports:
            there = area(imported)
            if there == here or not there:
                continue
            if layer(there) > layer(here):
                wrong.append(f"{module} imports {imported} (a higher layer)")
            elif layer(here) == layer(there) == 1 and there not in FEATURES[here]:
                wrong.append(
                    f"{module} imports {imported}: tlresearch.{here} may import only {sorted(FEATURES[here]) or 'no other feature package'}"
                )
    assert wrong == []


def test_no_module_over_the_size_limit():
    big = {str(p.relative_to(SRC)): n for p in module_paths().values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"split these modules (one idea each, at most {MAX_LINES} lines): {big}"


#: Config group -> the package its ``_target_`` s live in.
GROUP_PACKAGES = {
    "data": "tlresearch.data",
    "backbone": "tlresearch.models",
    "finetune": "tlresearch.finetune",
    "optimizer": "torch.optim",
    "scheduler": "tlresearch.models",
    "logger": ("tlresearch.runner", "pytorch_lightning.loggers"),
    "callbacks": ("tlresearch.runner", "tlresearch.checkpoints", "pytorch_lightning.callbacks"),
    "hparams_search": ("tlresearch.runner", "optuna.samplers"),
}


def targets(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return own + [t for value in node.values() for t in targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in targets(value)]
    return []


@pytest.mark.parametrize("group", sorted(GROUP_PACKAGES))
def test_each_config_group_builds_from_its_own_package(group):
    packages = GROUP_PACKAGES[group]
    packages = (packages,) if isinstance(packages, str) else packages
    found = {}
    for path in sorted((CONF / group).glob("*.yaml")):
        for target in targets(yaml.safe_load(path.read_text()) or {}):
            found[f"{path.name}: {target}"] = target.startswith(packages)
    assert found, f"conf/{group}/ names no _target_"
    assert [where for where, ok in found.items() if not ok] == []


#: A key with a value on its own line (``lr: 0.01``), not a mapping that opens below it.
LEAF_KEY = re.compile(r"^\s*[\w.@/+~-]+:\s*[^\s#]")


def uncommented_keys(text: str) -> list[str]:
    """The lines of a yaml file that set a key's value without a comment saying what it takes."""
    return [line for line in text.splitlines() if LEAF_KEY.match(line) and "#" not in line]


def test_uncommented_keys_are_found():
    text = "a: 1  # the a\nb: 2\nc:\n  d: x\n  e: y  # the e\n- f: 3\n"
    assert uncommented_keys(text) == ["b: 2", "  d: x"]


def test_every_config_key_says_what_it_takes():
    found = {f"{path.relative_to(CONF)}: {line.strip()}" for path in sorted(CONF.rglob("*.yaml"))
             for line in uncommented_keys(path.read_text())}
    assert sorted(found) == []
