"""bench/report.py renders a group the run had to skip as a sentence, not a crash or an empty table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _report_module():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_skipped_stream_group_is_reported_with_its_reason(tmp_path) -> None:
    machine = {"cpu": "x86_64", "cores": 2, "threads": 2, "torch": "t", "peft": "p", "adapterhub_lite": "a",
               "python": "3"}
    reason = "/tmp has 0.1 GB free, the group needs 1.6 GB (set BENCH_TMP to a roomier folder)"
    result = {"machine": machine, "command": "python bench/run.py --quick", "seconds": 5,
              "rows": [{"group": "stream", "skipped": reason}]}
    out = tmp_path / "bench.md"
    _report_module().write_markdown(result, out)
    text = out.read_text()
    assert f"Not measured in this run: {reason}." in text
    assert "read + fuse + write" not in text
