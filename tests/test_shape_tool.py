"""tools/shape.py, the figures issue 30 compares before and after: its cycle finder and import reader."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("shape", ROOT / "tools" / "shape.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cycles_are_strongly_connected_groups_of_two_or_more() -> None:
    shape = _tool()
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": {"g"}, "g": {"f"}}
    assert shape.cycles(graph) == [["a", "b", "c"], ["f", "g"]]
    assert shape.cycles({"a": {"b"}, "b": set()}) == []


def test_imports_count_in_function_and_type_only_imports(tmp_path: Path) -> None:
    shape = _tool()
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import X\n"
                      "def f():\n    from . import c\n    import os\n")
    known = {"pkg", "pkg.m", "pkg.b", "pkg.c"}
    assert shape.imports("pkg.m", source, known) == {"pkg.b", "pkg.c"}


def test_the_contract_surface_is_read_from_the_class_itself() -> None:
    surface = _tool().measure()["contract members"]
    assert {"create", "delta", "delta_weight"} <= set(surface["methods"])
    assert not any(name.startswith("_") for names in surface.values() for name in names)


def test_the_layer_is_in_no_import_cycle() -> None:
    """The forward strategies import the layer, never the other way round (issue 30): the layer and the
    modules that serve it stay out of every cycle, type-only and in-function imports counted."""
    cycles = _tool().measure()["import cycles"]
    caught = {m for group in cycles for m in group} & {"adapterhub_lite.layer", "adapterhub_lite.forward",
                                                        "adapterhub_lite.routing", "adapterhub_lite.mixed"}
    assert not caught, cycles
