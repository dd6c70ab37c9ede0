"""The core names no adapter family and no dataset: a plugin brings its own, through the hooks."""

from __future__ import annotations

import re
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "adapterhub_lite"
FORBIDDEN = {
    "the LoRA family's config": re.compile(r"LoraConfig"),
    "a dataset": re.compile(r"mnist", re.I),
    "a first-party model": re.compile(r"richboynet|ddpm|unet", re.I),
    "a digit class list": re.compile(r"range\(10\)|\(0, 1, 2, 3|\[0, 1, 2, 3"),
    "digits as classes": re.compile(r"\bdigit\b|(?<!letters, )\bdigits\b", re.I),
}
LAZY_REEXPORT = 'LoraConfig": "adapterhub_lite_lora"'  # the one allowed mention, in __init__.py


def test_no_core_module_names_a_family_a_dataset_or_its_classes() -> None:
    found = []
    for path in sorted(CORE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if LAZY_REEXPORT in line:
                continue
            for what, pattern in FORBIDDEN.items():
                if pattern.search(line):
                    found.append(f"{path.relative_to(CORE.parent)}:{number}: {what}: {line.strip()}")
    assert not found, "\n".join(found)


def _imports(path: Path) -> set[str]:
    """The core modules a module imports, at the top or inside functions (not under TYPE_CHECKING)."""
    import ast

    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(CORE.parent).with_suffix("").parts[:-1])
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(
        node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            module = ".".join([*base, node.module] if node.module else base)
        else:
            module = node.module or ""
        if module.startswith("adapterhub_lite"):
            names = [f"{module}.{a.name}" for a in node.names]
            found |= {n for n in names if (CORE.parent / (n.replace(".", "/") + ".py")).exists()} or {module}
    return {m.removesuffix(".__init__") for m in found}


def test_core_modules_import_each_other_without_cycles() -> None:
    graph = {".".join(p.relative_to(CORE.parent).with_suffix("").parts).removesuffix(".__init__"): _imports(p)
             for p in CORE.rglob("*.py")}
    graph = {m: {d for d in deps if d in graph and d != m and d != "adapterhub_lite"} for m, deps in graph.items()}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph[module]):
            if dep in path:
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif len(path) < 12:
                visit(dep, path + [dep])

    for module in sorted(graph):
        visit(module, [module])
    assert not cycles, "\n".join(sorted(set(cycles))[:20])
