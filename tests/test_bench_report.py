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


def _forward_row(**figures) -> dict:
    row = {"group": "forward", "model": "m", "adapters": 1, "base_ms": 1.0, "ours_ms": 1.1, "peft_ms": 1.2,
           "ours_overhead": 0.1, "peft_overhead": 0.2, "overhead_ratio": 0.5, "ours_lowrank_overhead": 0.1,
           "peft_lowrank_overhead": 0.2, "lowrank_ratio": 0.5, "ours_cold_overhead": 0.1, "cache_bytes": 0,
           "model_bytes": 1}
    return {**row, **figures}


def test_like_for_like_and_cold_rows_carry_verdicts_and_the_words_follow_the_figures(tmp_path) -> None:
    """The same report with the figures flipped says the opposite: no sentence is fixed text."""
    machine = {"cpu": "AMD EPYC", "cpu_flags": ["avx2"], "cores": 2, "threads": 2, "torch": "t",
               "torch_cpu_capability": "AVX2", "peft": "p", "adapterhub_lite": "a", "python": "3",
               "commit": "abc1234"}
    io = {"group": "io", "model": "m", "ours_save_ms": 5.0, "peft_save_ms": 4.1, "ours_load_ms": 1.0,
          "peft_load_ms": 2.0, "ours_bytes": 1, "peft_bytes": 1}
    module, out = _report_module(), tmp_path / "bench.md"
    good = {"machine": machine, "command": "c", "seconds": 1, "rows": [_forward_row()]}
    module.write_markdown(good, out)
    text = out.read_text()
    assert "at commit abc1234. Machine: AMD EPYC, 2 cores (avx2), torch t (CPU kernels: AVX2)" in text
    assert "| 0.50 | met | +10.0% | met |" in text  # low-rank ratio and its verdict, cold and its verdict
    assert "like for like (merged-weight cache off, the same low-rank products as PEFT): ours costs no more " \
           "than PEFT at m x1; more at none" in text
    bad = {**good, "rows": [_forward_row(ours_lowrank_overhead=0.3, ours_cold_overhead=0.5), io]}
    module.write_markdown(bad, out)
    text = out.read_text()
    assert "| 1.50 |" not in text and "| **missed** | +50.0% | **missed** |" in text
    assert "ours costs no more than PEFT at none; more at m x1" in text
    assert "The first call after a switch costs more than PEFT's call at m x1." in text
    assert "slower in one or both on m." in text and "| 1.22 | 0.50 |" in text
    assert "cached until the base changes" in text  # a run without the fingerprint row: the old wording
    cost = {"group": "fingerprint", "megabytes": 256, "check_s_per_gb": 0.62, "sha256_s_per_gb": 1.39}
    module.write_markdown({**bad, "rows": [*bad["rows"], cost]}, out)
    assert "a CRC-32 of every byte (so an in-place edit through `.data` is never missed): 0.62 s per GB of " \
           "targeted weights, against 1.39 s per GB for the SHA-256 itself (256 MB measured)" in out.read_text()


def test_the_benchmark_prose_holds_no_measured_figure() -> None:
    """bench/notes.md explains; figures and verdicts come from the run (report.py). A time, percentage, ratio,
    rate or size measured by a run in the prose would go stale with the next run."""
    import re

    measured = re.compile(r"\d[\d.,]*\s?(ms|s|%|x\b|GB/s|MB/s)|~\s?\d|about \d|\d+(\.\d+)? (MB|GB)\b(?! per| transparent)")
    found = [line for line in (ROOT / "bench" / "notes.md").read_text().splitlines() if measured.search(line)]
    assert not found, found


def _scale_side(**figures) -> dict:
    rounds = [{"switch_s": 0.01, "first_forward_s": 1.0, "steady_s": 1.0}] * 3
    side = {"load_s": 1.0, "rss_growth_mb": 10.0, "file_mb": 20.0, "base_s": 1.0, "model_mb": 1000.0,
            "cache_mb": 50.0, "rounds": rounds, "fold_max_diff": 0.0, "fold_scale": 1.0}
    return {**side, **figures}


def test_the_scale_section_judges_each_issue_32_target_from_the_figures() -> None:
    """bench/scale.py's tables (issue 32): each verdict follows its figures, and the missed rows are named."""
    report = _report_module()
    data = {"commit": "c", "cpu": "cpu", "avx512": False, "threads": 2, "torch": "t", "wall_s": 60, "count": 50,
            "ranks": [8, 128], "latent": 16, "switches": 3,
            "unet_config": {"block_out_channels": [320], "cross_attention_dim": 768},
            "text_config": {"hidden_size": 768, "num_hidden_layers": 12}, "shape": "sd15",
            "rows": [_scale_side()],
            "table": [{"dtype": "float32", "ours_vs_diffusers": 1e-6,
                       "ours": _scale_side(), "diffusers": _scale_side(load_s=4.0, rss_growth_mb=30.0)},
                      {"dtype": "float16", "ours_vs_diffusers": 1e-3, "ours_vs_float32": 2e-2,
                       "ours": _scale_side(load_s=2.0, rss_growth_mb=40.0, cache_mb=150.0,
                                           rounds=[{"switch_s": 0.5, "first_forward_s": 2.0, "steady_s": 1.2}]),
                       "diffusers": _scale_side(load_s=4.0)}]}
    good, bad = (report.scale_verdicts(entry) for entry in data["table"])
    assert all(good.values()) and not any(bad.values())
    text = "\n".join(report.scale_section(data))
    assert "| float32 | 1.00 | 4.00 | 4.0x met |" in text and "| float16 | 2.00 | 4.00 | 2.0x **missed** |" in text
    assert ("Rows missed: float16 load, float16 memory, float16 switch, float16 steady, float16 cache, "
            "float16 outputs" in text)
    assert "| float16 | 1.0e-03 | 2.0e-02 | 0.0e+00 | 0.01 **missed** |" in text


def test_the_scale_fuse_section_judges_memory_and_throughput_from_the_figures() -> None:
    """bench/scale_fuse.py's table (issue 32, item 3): peak over the start within 2 x the largest tensor + 300 MB,
    and copy / fuse >= 0.70, each verdict from its figures."""
    report = _report_module()
    data = {"commit": "c", "cpu": "cpu", "avx512": False, "threads": 2, "torch": "t", "wall_s": 600,
            "prepare_s": 300, "shape": "sdxl", "count": 10, "ranks": [8, 128], "checkpoint_mb": 5135.0,
            "largest_tensor_mb": 59.0, "lora_mb": [40.0, 700.0], "modules": 722, "fused_vs_float32": 4e-4,
            "unet_config": {"block_out_channels": [320, 640, 1280], "transformer_layers_per_block": [1, 2, 10]},
            "copy_s": [3.0, 2.0], "fuse_s": 2.5, "products_s": 1.5, "start_rss_mb": 500.0, "peak_mb": 900.0}
    assert report.scale_fuse_verdicts(data) == {"memory": True, "throughput": True}
    text = "\n".join(report.scale_fuse_section(data))
    assert "| 2.5 | 2.0 | 0.80 met | 1.5 | 400 | 418 met | 4.0e-04 |" in text and "Rows missed: none." in text
    worse = {**data, "fuse_s": 10.0, "peak_mb": 1000.0}
    assert report.scale_fuse_verdicts(worse) == {"memory": False, "throughput": False}
    assert "| 10.0 | 2.0 | 0.20 **missed** | 1.5 | 500 | 418 **missed** |" in "\n".join(report.scale_fuse_section(worse))


def test_the_routing_families_rows_judge_each_family_from_the_figures() -> None:
    """bench/routing_scale.py's per-family rows (issue 33, item 1): routed / base within the model's target and
    the family's own form equal to the core's sample-by-sample form, each verdict from its figures; PEFT's
    behaviour per family as measured (an error, or its difference from each sample alone)."""
    report = _report_module()

    def family_row(family: str, model: str, ratio: float, difference: float) -> dict:
        return {"model": model, "family": family, "adapters": 8, "batch": 64, "distinct_per_mix": 7.4,
                "base_ms": 2.0, "mixed_vs_base": ratio, "core_vs_base": 3.0, "vs_core_output": difference}

    rows = [family_row("ia3", "richboynet", 1.10, 1e-7), family_row("dora", "ddpm-unet", 1.31, 1e-7),
            family_row("loha", "richboynet", 1.0, 1e-3)]
    assert report.routing_family_verdicts(rows[0]) == {"vs base": True, "same outputs": True}
    assert report.routing_family_verdicts(rows[1]) == {"vs base": False, "same outputs": True}  # the UNet: 1.3
    assert report.routing_family_verdicts(rows[2]) == {"vs base": True, "same outputs": False}
    data = {"families": rows, "peft_families": {"loha": {"max_difference_vs_alone": 0.25},
                                                "dora": {"error": "Cannot pass `adapter_names` when DoRA is enabled."}}}
    text, missed = report.routing_families_section(data)
    text = "\n".join(text)
    assert "| richboynet | ia3 | 8 | 64 | 7 | 2.0 | 1.10x | 3.00x | 1.0e-07 | vs base met, same outputs met |" in text
    assert missed == ["dora on ddpm-unet x8 vs base", "loha on richboynet x8 same outputs"]
    assert "loha: accepted, differs from each sample alone by 2.5e-01" in text
    assert "dora: raises (Cannot pass `adapter_names` when DoRA is enabled.)" in text
