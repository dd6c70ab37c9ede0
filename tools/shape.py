"""The shape of the core, as issue 30 measures it before and after a redesign.

    python tools/shape.py [--json]

Prints: the core's modules and lines (the largest named), the public surface of the layer contract class (methods,
properties, class attributes defined on it, not inherited from nn.Module), and every import cycle among the
package's modules, counting imports at module level, inside functions and under TYPE_CHECKING alike (a cycle
is a strongly connected group of two or more modules), and the public names that still say "merge" (issue 30
fixes fold / combine / fuse): the members of the API classes, the specs, the hooks and the commands, each
either current or an older name kept for compatibility (a `Renamed` / `_old_name` member, an alias of another
name, a hook that warns on use); and the code lines a VeRA-sized family needs (tests/fixtures/vera-plugin, which
tests/test_contract_kit.py runs through the contract kit).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "adapterhub_lite"


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules `name` imports anywhere in its file (relative imports resolved; `from X import Y`
    counts Y when Y is itself a module)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(out, key=lambda g: (-len(g), g))


API_CLASSES = {"model.py": "AdaptedModel", "host.py": "AdaptedModule", "layer.py": "AdapterLayer",
               "forward.py": "LayerPolicy", "registry.py": "Registry"}
ALIAS_CALLS = {"Renamed", "_old_name"}


def _is_alias(value: ast.expr | None) -> bool:
    """An older name's value: `Renamed(...)` / `_old_name(...)`, another name, or a tuple of those."""
    if isinstance(value, ast.Tuple):
        return bool(value.elts) and all(_is_alias(v) for v in value.elts)
    if isinstance(value, ast.Call):
        return getattr(value.func, "id", None) in ALIAS_CALLS
    return isinstance(value, ast.Name)


def contract_surface(path: Path, cls: str) -> dict[str, list[str]]:
    """Public names defined in class `cls` of `path`: methods, properties, class attributes."""
    tree = ast.parse(path.read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
    surface: dict[str, list[str]] = {"methods": [], "properties": [], "class attributes": []}
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
            decorators = {getattr(d, "id", getattr(d, "attr", "")) for d in item.decorator_list}
            surface["properties" if "property" in decorators else "methods"].append(item.name)
        elif isinstance(item, (ast.AnnAssign, ast.Assign)) and not _is_alias(item.value):  # older names: not counted
            targets = [item.target] if isinstance(item, ast.AnnAssign) else item.targets
            surface["class attributes"] += [t.id for t in targets if isinstance(t, ast.Name)
                                            and not t.id.startswith("_")]
    return surface


def merge_words() -> dict[str, list[str]]:
    """Public names saying "merge": {"current": [...], "older names": [...]}."""
    found: dict[str, list[str]] = {"current": [], "older names": []}

    def note(label: str, older: bool) -> None:
        if "merge" in label.split(" ")[-1].lower():
            found["older names" if older else "current"].append(label)

    for file, cls in API_CLASSES.items():
        tree = ast.parse((PACKAGE / file).read_text())
        node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                note(f"{cls}.{item.name}", False)
            elif isinstance(item, (ast.AnnAssign, ast.Assign)):
                targets = [item.target] if isinstance(item, ast.AnnAssign) else item.targets
                names = [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
                for name in names:
                    if isinstance(name, ast.Name) and not name.id.startswith("_"):
                        note(f"{cls}.{name.id}", _is_alias(item.value))
    for item in ast.parse((PACKAGE / "specs.py").read_text()).body:
        if isinstance(item, ast.ClassDef):
            note(item.name, False)
        elif isinstance(item, ast.Assign):
            for target in item.targets:
                for name in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(name, ast.Name):
                        note(name.id, _is_alias(item.value))
    for item in ast.parse((PACKAGE / "hookspecs.py").read_text()).body:
        if isinstance(item, ast.FunctionDef):
            warns = any(isinstance(d, ast.Call) and any(k.arg == "warn_on_impl" for k in d.keywords)
                        for d in item.decorator_list)
            note(f"hook {item.name}", warns)
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for item in ast.walk(ast.parse(path.read_text())):
            if isinstance(item, ast.Call) and getattr(item.func, "attr", None) == "command" and item.args \
                    and isinstance(item.args[0], ast.Constant):
                note(f"command {item.args[0].value}", False)
    return found


VERA_FAMILY = ROOT / "tests" / "fixtures" / "vera-plugin" / "vera_plugin.py"


def code_lines(path: Path) -> int:
    """Lines of code: not blank, not a comment, not part of a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for number, line in enumerate(path.read_text().splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and number not in docstrings)


def measure() -> dict:
    found = modules()
    lines = {name: len(path.read_text().splitlines()) for name, path in found.items()}
    core = {n: v for n, v in lines.items() if not n.startswith("adapterhub_lite.cli")}
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    surface = contract_surface(PACKAGE / "layer.py", "AdapterLayer")
    largest = max(core, key=core.get)
    return {"modules": len(found), "core modules (without cli)": len(core), "core lines": sum(core.values()),
            "largest core module": {largest: core[largest]},
            "contract class": "adapterhub_lite.layer.AdapterLayer",
            "contract public members": {k: len(v) for k, v in surface.items()},
            "contract members": surface, "import cycles": cycles(graph), "names saying merge": merge_words(),
            "code lines of a VeRA-sized family (tests/fixtures/vera-plugin)": code_lines(VERA_FAMILY)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    figures = measure()
    if parser.parse_args().json:
        print(json.dumps(figures, indent=1))
        return
    for key, value in figures.items():
        if key == "import cycles":
            print(f"import cycles: {len(value)}")
            for group in value:
                print("  " + " <-> ".join(m.removeprefix("adapterhub_lite.") for m in group))
        elif key == "names saying merge":
            print(f"public names saying merge: {len(value['current'])} current ({', '.join(value['current'])}), "
                  f"{len(value['older names'])} older names kept ({', '.join(value['older names'])})")
        elif key == "contract members":
            for kind, names in value.items():
                print(f"  {kind}: {', '.join(names)}")
        else:
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
