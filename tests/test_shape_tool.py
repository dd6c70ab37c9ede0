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
    """The forward strategies import the adapted module and its kinds, never the other way round (issue 30):
    they stay out of every cycle, type-only and in-function imports counted."""
    cycles = _tool().measure()["import cycles"]
    caught = {m for group in cycles for m in group} & {"adapterhub_lite.layer", "adapterhub_lite.forward",
                                                        "adapterhub_lite.routing", "adapterhub_lite.host"}
    assert not caught, cycles


def test_the_zoo_modules_old_flat_paths_still_import_with_a_pointer() -> None:
    """The zoo side moved into adapterhub_lite.zoo (issue 30): code importing the old flat paths keeps working
    and is told where the module went; adapterhub_lite.merge serves both of its successors."""
    import importlib
    import subprocess
    import sys

    code = ("import warnings, adapterhub_lite\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    from adapterhub_lite.merge import fuse, plan_combine\n"
            "    from adapterhub_lite.workflow import load_base\n"
            "    from adapterhub_lite.zoo.workflow import train_adapter\n"
            "print(fuse.__module__, plan_combine.__module__, load_base.__module__, train_adapter.__module__)\n"
            "print(sorted({str(w.message).split(':')[0] for w in caught if w.category is DeprecationWarning}))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules, warned = run.stdout.splitlines()
    assert modules == ("adapterhub_lite.zoo.fuse adapterhub_lite.zoo.combine adapterhub_lite.zoo.loading "
                       "adapterhub_lite.zoo.train")
    assert "adapterhub_lite.merge moved to adapterhub_lite.zoo.combine and adapterhub_lite.zoo.fuse" in warned
    split = " and ".join(f"adapterhub_lite.zoo.{n}" for n in ("loading", "evaluation", "versions", "train"))
    assert f"adapterhub_lite.workflow moved to {split}" in warned
    assert f"adapterhub_lite.zoo.workflow moved to {split}" in warned
    assert importlib.import_module("adapterhub_lite.zoo").Zoo.__module__ == "adapterhub_lite.zoo.store"


def test_the_core_is_in_no_import_cycle_at_any_level() -> None:
    """Issue 30: no cycle among the core's modules, type-only and in-function imports counted (file reading and
    writing name what they need of the model handle as a Protocol instead of importing it back)."""
    assert _tool().measure()["import cycles"] == []
