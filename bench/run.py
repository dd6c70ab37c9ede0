"""adapterhub_lite vs PEFT, side by side in one process: same models, inputs, dtype, threads, LoRA r=8 alpha=16.

    python bench/run.py                 # everything, writes docs/benchmarks.md and bench/results.json
    python bench/run.py --quick         # fewer repeats (a smoke run)
    python bench/run.py --only forward  # one group: cli, forward, train, merge, combine, routing, io, stream,
                                        # families, compiled

Latency is the median of repeated runs after warm-up; "overhead" is adapter
latency minus base latency. Peak memory of a training step is measured in a
fresh child process (VmHWM after resetting it through /proc/self/clear_refs).
Needs peft (the bench extra: pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cli import cli_group
from compiled import compile_group
from families import family_group
from timing import interleaved, median_time, medians, no_merged_weight_cache, paired_ratio, served_with

ROOT = Path(__file__).resolve().parent.parent
RANK, ALPHA, THREADS = 8, 16, 2


# --- models ------------------------------------------------------------------------------------------------------
class WideMLP(nn.Module):
    """Four 4096x4096 Linear layers: where merge and combination costs show."""

    def __init__(self, width: int = 4096) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (self.fc1, self.fc2, self.fc3):
            x = torch.relu(layer(x))
        return self.fc4(x)


def make_case(name: str) -> dict[str, Any]:
    """Model, input, the call that runs it, and the module names LoRA targets."""
    from adapterhub_lite import get_registry

    torch.manual_seed(0)
    registry = get_registry()
    if name == "richboynet":
        model, args = registry.create_model("richboynet"), (torch.randn(64, 1, 28, 28),)
        targets = ["linear1", "linear2", "linear3"]
    elif name == "wide-mlp":
        model, args = WideMLP(), (torch.randn(32, 4096),)
        targets = ["fc1", "fc2", "fc3", "fc4"]
    elif name == "mnist-cnn":
        model, args = registry.create_model("mnist-cnn"), (torch.randn(64, 1, 28, 28),)
        targets = ["conv1", "conv2", "conv3", "fc1", "fc2", "fc3", "fc4"]
    elif name == "ddpm-unet":
        model = registry.create_model("ddpm-unet")
        args = (torch.randn(16, 1, 32, 32), torch.randint(0, 1000, (16,)))
        targets = [n for n, m in model.named_modules()
                   if isinstance(m, nn.MultiheadAttention)
                   or (isinstance(m, nn.Conv2d) and n.endswith((".conv1", ".conv2")))]
    else:
        raise SystemExit(f"unknown model {name}")
    return {"name": name, "model": model.eval(), "args": args, "targets": targets}


def ours(model: nn.Module, targets: list[str], n: int, seed: int = 0, patterns: list[str] | None = None):
    """Our model with `n` LoRA adapters on `targets` (module names; or `patterns`, globs for a large model)."""
    from adapterhub_lite import AdaptedModel, LoraConfig

    am = AdaptedModel(model)
    config = LoraConfig(targets=patterns or ["re:" + "|".join(t.replace(".", r"\.") for t in targets)], rank=RANK,
                        alpha=ALPHA)
    names = [f"a{i}" for i in range(n)]
    for name in names:
        am.add_adapter(name, config)
    _randomize_b(am.model, seed)
    am.set_active(names)
    return am


def theirs(model: nn.Module, targets: list[str], n: int, seed: int = 0):
    import peft

    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(model, config, adapter_name="a0")
        for i in range(1, n):
            pm.add_adapter(f"a{i}", config)
        _randomize_b(pm, seed)
        pm.base_model.set_adapter([f"a{i}" for i in range(n)])
    return pm.eval()


def sync(am, pm, targets: list[str], names: list[str]) -> None:
    """Give PEFT's adapters exactly our factors, so results can be compared, not only timed."""
    with torch.no_grad():
        for module in targets:
            ours_layer, peft_layer = am.layers()[module], pm.base_model.model.get_submodule(module)
            for name in names:
                peft_layer.lora_A[name].weight.copy_(ours_layer.adapters[name].lora_A)
                peft_layer.lora_B[name].weight.copy_(ours_layer.adapters[name].lora_B)


def _randomize_b(model: nn.Module, seed: int) -> None:
    """B starts at zero; real adapters are not (and zeros would flatter nobody)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)


def forward_group(models: list[str], repeats: int) -> list[dict[str, Any]]:
    """Per model and adapter count, side by side: the bare base, ours (default), peft; then like for like:
    ours with the merged-weight cache off (the same low-rank work as peft), ours' first call after the active
    set changed (cache cold: a merge, then the forward), and ours merged vs peft merged."""
    rows = []
    for name in models:
        case = make_case(name)
        base_model, args, targets = case["model"], case["args"], case["targets"]
        model_bytes = sum(p.numel() * p.element_size() for p in base_model.parameters())
        for n in (1, 4, 8):
            am = ours(copy.deepcopy(base_model), targets, n)
            pm = theirs(copy.deepcopy(base_model), targets, n)

            def cold() -> None:
                for layer in am.layers().values():
                    layer.invalidate()  # as after set_active or a weight change
                am(*args)

            with torch.inference_mode():  # interleaved, so drift in the machine hits all alike
                times = interleaved([lambda: base_model(*args), lambda: am(*args), lambda: pm(*args), cold], repeats)
                cache_bytes = am.cache_bytes
                with no_merged_weight_cache(am):
                    plain = interleaved([lambda: base_model(*args), lambda: am(*args), lambda: pm(*args)], repeats)
            base, t_ours, t_peft, t_cold = medians(times)
            row = {"group": "forward", "model": name, "adapters": n, "base_ms": base * 1e3,
                   "ours_ms": t_ours * 1e3, "peft_ms": t_peft * 1e3, "ours_cold_ms": t_cold * 1e3,
                   "ours_overhead": paired_ratio(times[1], times[0]) - 1,
                   "peft_overhead": paired_ratio(times[2], times[0]) - 1,
                   "ours_cold_overhead": paired_ratio(times[3], times[0]) - 1,
                   "ours_lowrank_ms": statistics.median(plain[1]) * 1e3,
                   "ours_lowrank_overhead": paired_ratio(plain[1], plain[0]) - 1,
                   "peft_lowrank_overhead": paired_ratio(plain[2], plain[0]) - 1,
                   "cache_bytes": cache_bytes, "model_bytes": model_bytes}
            row["overhead_ratio"] = (row["ours_overhead"] / row["peft_overhead"]
                                     if row["peft_overhead"] > 0 else float("nan"))
            row["lowrank_ratio"] = (row["ours_lowrank_overhead"] / row["peft_lowrank_overhead"]
                                    if row["peft_lowrank_overhead"] > 0 else float("nan"))
            if n in (1, 8):
                am.fold()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pm.merge_adapter()
                with torch.inference_mode():
                    merged = interleaved([lambda: base_model(*args), lambda: am(*args), lambda: pm(*args)], repeats)
                row["merged_vs_base"] = paired_ratio(merged[1], merged[0])
                row["peft_merged_vs_base"] = paired_ratio(merged[2], merged[0])
                am.unfold()
                pm.unmerge_adapter()
            rows.append(row)
            print(f"forward {name} x{n}: base {base*1e3:.2f} ms, ours {t_ours*1e3:.2f} (cold {t_cold*1e3:.2f}, "
                  f"low-rank {row['ours_lowrank_ms']:.2f}), peft {t_peft*1e3:.2f}; cache {cache_bytes/2**20:.1f} MB "
                  f"of {model_bytes/2**20:.1f} MB", file=sys.stderr, flush=True)
    return rows


# --- training step, in a fresh child for peak memory ---------------------------------------------------------------
TRAIN_VARIANTS = ("ours", "ours-lowrank", "peft", "full")


def training_step(case: dict[str, Any], variant: str) -> tuple[Callable[[], None], list[nn.Parameter]]:
    """One forward, backward and AdamW step of `variant` on its own copy of the case's model."""
    model, args, targets = copy.deepcopy(case["model"]), case["args"], case["targets"]
    if variant in ("ours", "ours-lowrank"):
        am = ours(model, targets, 1)
        if variant == "ours-lowrank":  # small convs through base + low-rank ops (merged-weights training off)
            from adapterhub_lite import LayerPolicy

            am.policy = LayerPolicy(folded_training=False)
        params, net = am.trainable_parameters(), am
    elif variant == "peft":
        net = theirs(model, targets, 1)
        params = [p for p in net.parameters() if p.requires_grad]
    else:  # full fine-tuning
        model.requires_grad_(True)
        params, net = list(model.parameters()), model
    net.train()
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        out = net(*args)
        loss = out.float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, params


def train_child(model_name: str, variant: str, steps: int) -> dict[str, Any]:
    """Peak memory of `steps` training steps, in a fresh process."""
    torch.set_num_threads(THREADS)
    step, params = training_step(make_case(model_name), variant)
    rss_before = _status("VmRSS")  # the model is built; gradients and optimizer state are counted below
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    for _ in range(steps):
        step()
    return {"peak_extra_mb": (_status("VmHWM") - rss_before) / 1024, "peak_mb": _status("VmHWM") / 1024,
            "trainable": sum(p.numel() for p in params)}


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # kB
    raise RuntimeError(field)


def train_group(models: list[str], steps: int, memory_runs: int) -> list[dict[str, Any]]:
    """Time: the four variants side by side in this process, one step each per round, in shuffled order (drift
    and neighbours hit all alike). Memory: each variant alone in a fresh child, median of `memory_runs`."""
    rows = []
    for name in models:
        case = make_case(name)
        steps_by_variant = [training_step(case, variant)[0] for variant in TRAIN_VARIANTS]
        times = medians(interleaved(steps_by_variant, steps))
        row: dict[str, Any] = {"group": "train", "model": name, "steps": steps, "memory_runs": memory_runs}
        for variant, seconds in zip(TRAIN_VARIANTS, times):
            runs = [json.loads(subprocess.run([sys.executable, __file__, "--child-train", name, variant, "5"],
                                              capture_output=True, text=True, check=True,
                                              env={**os.environ, "PYTHONWARNINGS": "ignore"}
                                              ).stdout.strip().splitlines()[-1]) for _ in range(memory_runs)]
            row.update({f"{variant}_ms": seconds * 1e3,
                        f"{variant}_peak_extra_mb": statistics.median(r["peak_extra_mb"] for r in runs),
                        f"{variant}_trainable": runs[0]["trainable"]})
        rows.append(row)
        print(f"train {name}: ours {row['ours_ms']:.1f} ms, peft {row['peft_ms']:.1f}, full {row['full_ms']:.1f}",
              file=sys.stderr, flush=True)
    return rows


# --- merge, combination, save/load on the wide MLP -----------------------------------------------------------------
def merge_group(repeats: int) -> list[dict[str, Any]]:
    """Merge and unmerge one adapter on the wide MLP, timed separately: ours by default (every merge writes a
    fresh tensor, released again on unmerge) and with keep_fold_buffers on (unmerge keeps the merged tensor for
    the next merge to write into: no allocation, one weight-sized copy held while unmerged)."""
    from adapterhub_lite import LayerPolicy

    case = make_case("wide-mlp")
    base_model, targets = case["model"], case["targets"]
    original = {k: v.clone() for k, v in base_model.state_dict().items()}
    am = ours(copy.deepcopy(base_model), targets, 1)
    pm = theirs(copy.deepcopy(base_model), targets, 1)

    def cycle(merge: Callable[[], Any], unmerge: Callable[[], Any]) -> tuple[float, float]:
        merges, unmerges = [], []
        for i in range(repeats + 2):
            start = time.perf_counter()
            merge()
            middle = time.perf_counter()
            unmerge()
            if i >= 2:  # warm-up
                merges.append(middle - start)
                unmerges.append(time.perf_counter() - middle)
        return statistics.median(merges), statistics.median(unmerges)

    fresh_merge, fresh_unmerge = cycle(am.merge, am.unmerge)  # the default: a new tensor every merge
    am.policy = LayerPolicy(keep_fold_buffers=True)
    try:
        kept_merge, kept_unmerge = cycle(am.merge, am.unmerge)  # opt-in: re-merge into the kept buffer
        am.release_buffers()
    finally:
        am.policy = LayerPolicy()
    peft_merge, peft_unmerge = cycle(pm.merge_adapter, pm.unmerge_adapter)
    exact = all(torch.equal(am.model.get_submodule(n).base.weight, original[f"{n}.weight"]) for n in targets)
    peft_exact = all(torch.equal(pm.base_model.model.get_submodule(n).base_layer.weight, original[f"{n}.weight"])
                     for n in targets)
    print(f"merge wide: ours {fresh_merge*1e3:.1f} ms (kept buffer {kept_merge*1e3:.1f}), peft {peft_merge*1e3:.1f}; "
          f"unmerge ours {fresh_unmerge*1e3:.1f}, peft {peft_unmerge*1e3:.1f}", file=sys.stderr, flush=True)
    return [{"group": "merge", "model": "wide-mlp", "fresh_merge_ms": fresh_merge * 1e3,
             "fresh_unmerge_ms": fresh_unmerge * 1e3, "kept_merge_ms": kept_merge * 1e3,
             "kept_unmerge_ms": kept_unmerge * 1e3, "peft_merge_ms": peft_merge * 1e3,
             "peft_unmerge_ms": peft_unmerge * 1e3, "fresh_speedup": peft_merge / fresh_merge,
             "kept_speedup": peft_merge / kept_merge, "ours_unmerge_bit_exact": exact,
             "peft_unmerge_bit_exact": peft_exact}]


def combine_group() -> list[dict[str, Any]]:
    case = make_case("wide-mlp")
    base_model, targets = case["model"], case["targets"]
    am = ours(copy.deepcopy(base_model), targets, 2)
    pm = theirs(copy.deepcopy(base_model), targets, 2)
    sync(am, pm, targets, ["a0", "a1"])
    start = time.perf_counter()
    am.combine({"a0": 1.0, "a1": 1.0}, out="c", method="svd", rank=RANK)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.add_weighted_adapter(["a0", "a1"], [1.0, 1.0], "c", combination_type="svd", svd_rank=RANK)
    t_peft = time.perf_counter() - start
    worst = 0.0
    for name in targets:
        ours_delta = am.layers()[name].layer_of("c").delta_weight("c").double()
        layer = pm.base_model.model.get_submodule(name)
        peft_delta = layer.get_delta_weight("c").double()
        worst = max(worst, float((ours_delta - peft_delta).norm() / peft_delta.norm()))
    print(f"svd combine wide: ours {t_ours:.3f} s, peft {t_peft:.2f} s, rel diff {worst:.2e}", file=sys.stderr)
    return [{"group": "combine", "model": "wide-mlp", "ours_s": t_ours, "peft_s": t_peft,
             "speedup": t_peft / t_ours, "max_relative_delta_difference": worst}]


ROUTED_ADAPTERS = (8, 16, 32)


def routing_group(models: list[str], repeats: int) -> list[dict[str, Any]]:
    """N adapters (8, 16, 32), batch 64, every sample names its adapter: one routed forward (default cache
    budget, and with a budget of N merged copies), N sub-batches, peft, and the bare base on the same batch."""
    from adapterhub_lite import LayerPolicy

    rows = []
    for name in models:
        case = make_case(name)
        base_model, targets = case["model"], case["targets"]
        args = tuple(a[:64] if a.shape[0] >= 64 else a.repeat(64 // a.shape[0], *[1] * (a.dim() - 1))
                     for a in case["args"])
        for n in ROUTED_ADAPTERS:
            names = [f"a{i % n}" for i in range(64)]
            am = ours(copy.deepcopy(base_model), targets, n)
            pm = theirs(copy.deepcopy(base_model), targets, n)

            def routed() -> None:
                with am.routing(names):
                    am(*args)

            def routed_budget() -> None:
                with served_with(am, LayerPolicy(cache_budget=float(n))), am.routing(names):
                    am(*args)

            def loop() -> None:
                for i in range(n):
                    am.set_active([f"a{i}"])
                    am(*(a[i::n] for a in args))

            def peft_routed() -> None:
                pm(*args, adapter_names=names)

            with torch.inference_mode():
                try:
                    peft_routed()
                    fns, peft_note = [lambda: base_model(*args), routed, routed_budget, loop, peft_routed], ""
                except (TypeError, ValueError) as exc:  # e.g. no mixed batches through nn.MultiheadAttention
                    fns, peft_note = [lambda: base_model(*args), routed, routed_budget, loop], " ".join(str(exc).split())
                times = interleaved(fns, repeats)
            t_base, t_routed, t_budget, t_loop, *t_peft = medians(times)
            rows.append({"group": "routing", "model": name, "adapters": n, "base_ms": t_base * 1e3,
                         "routed_ms": t_routed * 1e3, "routed_budget_ms": t_budget * 1e3, "loop_ms": t_loop * 1e3,
                         "peft_ms": t_peft[0] * 1e3 if t_peft else None, "peft_note": peft_note,
                         "vs_base": paired_ratio(times[1], times[0]),
                         "budget_vs_base": paired_ratio(times[2], times[0]),
                         "vs_loop": paired_ratio(times[3], times[1]),
                         "vs_peft": paired_ratio(times[4], times[1]) if t_peft else None})
            print(f"routing {name} x{n}: base {t_base*1e3:.1f} ms, routed {t_routed*1e3:.1f} (budget {n}: "
                  f"{t_budget*1e3:.1f}), loop {t_loop*1e3:.1f}, peft {t_peft[0] * 1e3 if t_peft else peft_note}",
                  file=sys.stderr, flush=True)
    return rows


def stream_child(mode: str, src: str, dst: str) -> dict[str, Any]:
    """In a fresh process: a plain read of the file, or the streamed fuse; time and peak RSS."""
    torch.set_num_threads(THREADS)
    from adapterhub_lite.zoo.streaming import fuse_file
    from adapterhub_lite.tensorfile import read_header

    start_rss = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    started = time.perf_counter()
    if mode in ("read", "copy"):
        buffer = memoryview(bytearray(64 << 20))
        with open(src, "rb", buffering=0) as f, open(dst if mode == "copy" else os.devnull, "wb") as out:
            while n := f.readinto(buffer):
                if mode == "copy":
                    out.write(buffer[:n])
        extra: dict[str, Any] = {}
    elif mode == "zoo":  # src is a zoo prepared by stream_cli.prepare_zoo
        from stream_cli import fuse_through_zoo

        extra = fuse_through_zoo(src, dst)
        src = str(Path(src) / "big-mlp" / "base" / "v1" / "model.safetensors")
    else:
        infos = read_header(src).tensors
        gen = torch.Generator().manual_seed(0)
        terms = {name: [(torch.randn(info.shape[0], RANK, generator=gen) * 0.01,
                         torch.randn(RANK, *info.shape[1:], generator=gen) * 0.01, ALPHA / RANK)]
                 for name, info in infos.items() if len(info.shape) == 2}
        extra = fuse_file(src, dst, terms)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes": Path(src).stat().st_size, "peak_mb": _status("VmHWM") / 1024,
            "start_mb": start_rss / 1024, **extra}


def stream_group(layers: int) -> list[dict[str, Any]]:
    """Out-of-core fuse of a synthetic checkpoint (`layers` x 8192x4096 float32 + small tensors; 16 = 2.1 GB).

    Needs the checkpoint's size twice on disk (source + fused output; the copy is removed before the fuse runs).
    With less free space the group is skipped with a row that says so, rather than failing half-way."""
    from adapterhub_lite.zoo.streaming import write_streamed

    size = layers * (8192 * 4096 + 8192) * 4
    tmp_root = os.environ.get("BENCH_TMP") or tempfile.gettempdir()
    free = shutil.disk_usage(tmp_root).free
    if free < 2 * size + (512 << 20):
        note = (f"{tmp_root} has {free / 1e9:.1f} GB free, the group needs {(2 * size + (512 << 20)) / 1e9:.1f}"
                f" GB (set BENCH_TMP to a roomier folder)")
        print(f"stream: skipped: {note}", file=sys.stderr, flush=True)
        return [{"group": "stream", "skipped": note}]
    with tempfile.TemporaryDirectory(dir=tmp_root) as tmp:
        src, dst = Path(tmp) / "big.safetensors", Path(tmp) / "fused.safetensors"
        specs = [(f"layers.{i}.weight", torch.float32, (8192, 4096)) for i in range(layers)]
        specs += [(f"layers.{i}.bias", torch.float32, (8192,)) for i in range(layers)]
        gen = torch.Generator().manual_seed(0)
        write_streamed(src, specs, lambda name, t: t.normal_(generator=gen))
        results = {}
        from stream_cli import prepare_zoo

        prepare_zoo(src, Path(tmp) / "zoo", layers)
        for mode, source in (("read", src), ("copy", src), ("fuse", src), ("zoo", Path(tmp) / "zoo")):
            dst.unlink(missing_ok=True)
            out = subprocess.run([sys.executable, __file__, "--child-stream", mode, str(source), str(dst)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"stream group: the {mode} child failed (exit {out.returncode}):\n"
                                 f"{out.stderr[-3000:]}")
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    largest_mb = 8192 * 4096 * 4 / 2**20
    read, copy_, fuse = results["read"], results["copy"], results["fuse"]
    row = {"group": "stream", "bytes": read["bytes"], "largest_tensor_mb": largest_mb,
           "read_s": read["seconds"], "copy_s": copy_["seconds"], "fuse_s": fuse["seconds"],
           "read_gb_s": read["bytes"] / read["seconds"] / 1e9, "copy_gb_s": copy_["bytes"] / copy_["seconds"] / 1e9,
           "fuse_gb_s": fuse["bytes"] / fuse["seconds"] / 1e9, "fuse_peak_mb": fuse["peak_mb"],
           "fuse_start_mb": fuse["start_mb"], "read_peak_mb": read["peak_mb"], "copy_peak_mb": copy_["peak_mb"],
           "fused_tensors": fuse["fused"], "zoo_fuse_s": results["zoo"]["seconds"],
           "zoo_fuse_gb_s": results["zoo"]["bytes"] / results["zoo"]["seconds"] / 1e9,
           "zoo_fuse_peak_mb": results["zoo"]["peak_mb"], "zoo_fuse_start_mb": results["zoo"]["start_mb"]}
    print(f"stream: {row['bytes']/1e9:.2f} GB, read {row['read_gb_s']:.2f} GB/s, fuse {row['fuse_gb_s']:.2f} GB/s, "
          f"peak {row['fuse_peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    return [row]


def io_group(models: list[str], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name in models:
        case = make_case(name)
        base_model, targets = case["model"], case["targets"]
        am = ours(copy.deepcopy(base_model), targets, 1)
        pm = theirs(copy.deepcopy(base_model), targets, 1)
        with tempfile.TemporaryDirectory() as tmp:
            ours_file, peft_dir = Path(tmp) / "a.safetensors", Path(tmp) / "peft"
            t_save_ours = median_time(lambda: am.save_adapter("a0", ours_file), repeats, warmup=1)
            t_save_peft = median_time(lambda: pm.save_pretrained(str(peft_dir)), repeats, warmup=1)
            fresh = ours(copy.deepcopy(base_model), targets, 0)

            def load_ours() -> None:
                fresh.load_adapter(ours_file, name="x")
                fresh.delete_adapter("x")

            t_load_ours = median_time(load_ours, repeats, warmup=1)
            counter = iter(range(10**6))

            def load_peft() -> None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a non-default adapter is saved in a subfolder of its name
                    pm.load_adapter(str(peft_dir / "a0"), adapter_name=f"x{next(counter)}")

            t_load_peft = median_time(load_peft, repeats, warmup=1)
            peft_bytes = sum(p.stat().st_size for p in (peft_dir / "a0").iterdir())
            rows.append({"group": "io", "model": name, "ours_save_ms": t_save_ours * 1e3,
                         "peft_save_ms": t_save_peft * 1e3, "ours_load_ms": t_load_ours * 1e3,
                         "peft_load_ms": t_load_peft * 1e3, "ours_bytes": ours_file.stat().st_size,
                         "peft_bytes": peft_bytes})
    rows.append(fingerprint_cost(repeats))
    return rows


def fingerprint_cost(repeats: int, megabytes: int = 256) -> dict[str, Any]:
    """Seconds per GB of base weights: the full-content check every load and save makes (CRC-32 of every
    byte, so no in-place edit is missed) and the SHA-256 fingerprint it guards (computed once per change)."""
    from adapterhub_lite.fingerprint import content_check, state_fingerprint

    weight = torch.randn(megabytes * 2**20 // 4)
    gigabytes = weight.numel() * 4 / 2**30
    t_check = median_time(lambda: content_check(weight), repeats, warmup=1)
    t_hash = median_time(lambda: state_fingerprint({"w": weight}), repeats, warmup=1)
    return {"group": "fingerprint", "megabytes": megabytes, "check_s_per_gb": t_check / gigabytes,
            "sha256_s_per_gb": t_hash / gigabytes}


# --- report -----------------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import peft

    import adapterhub_lite

    return {"cpu": _cpu_model(), "cpu_flags": _vector_flags(), "arch": platform.machine(), "cores": os.cpu_count(),
            "threads": THREADS, "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "peft": peft.__version__,
            "adapterhub_lite": adapterhub_lite.__version__, "python": platform.python_version(), "commit": _commit()}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n")[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines()) if k.strip()}


def _cpu_model() -> str:
    """The processor's name as lscpu shows it (platform.processor() is empty on Linux)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def _vector_flags() -> list[str]:
    """The vector extensions that decide kernel speed (two machines 4x apart differ in these)."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]


def _commit() -> str:
    """HEAD of the checkout the bench runs from, with '+changes' when the tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+changes" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description="adapterhub_lite vs PEFT benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer repeats: a smoke run")
    parser.add_argument("--only", action="append",
                        choices=["cli", "forward", "train", "merge", "combine", "routing", "io", "stream",
                                 "families", "compiled"])
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--child-train", nargs=3, metavar=("MODEL", "VARIANT", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--child-stream", nargs=3, metavar=("MODE", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_stream:
        print(json.dumps(stream_child(*args.child_stream)))
        return
    if args.child_train:
        model, variant, steps = args.child_train
        print(json.dumps(train_child(model, variant, int(steps))))
        return
    torch.set_num_threads(THREADS)
    torch.set_flush_denormal(True)
    warnings.simplefilter("ignore")
    models = ["richboynet", "wide-mlp", "mnist-cnn", "ddpm-unet"]
    repeats = 5 if args.quick else 50
    groups = args.only or ["cli", "forward", "train", "merge", "combine", "routing", "io", "stream", "families",
                           "compiled"]
    started = time.time()
    rows: list[dict[str, Any]] = []
    if "cli" in groups:
        rows += cli_group(5 if args.quick else 20)
    if "forward" in groups:
        rows += forward_group(models, repeats)
    if "train" in groups:
        rows += train_group(models, 3 if args.quick else 60, 1 if args.quick else 3)
    if "merge" in groups:
        rows += merge_group(repeats)
    if "combine" in groups:
        rows += combine_group()
    if "routing" in groups:
        rows += routing_group(["richboynet", "mnist-cnn", "ddpm-unet"], repeats)
    if "stream" in groups:
        rows += stream_group(4 if args.quick else 16)
    if "io" in groups:
        rows += io_group(models, 3 if args.quick else 10)
    if "families" in groups:
        rows += family_group(["richboynet", "mnist-cnn"], make_case, repeats, 3 if args.quick else 30)
    if "compiled" in groups:  # ddpm-unet's LoRA includes attention, which has no fixed-shape path yet
        rows += compile_group(["richboynet"] if args.quick else ["richboynet", "mnist-cnn", "wide-mlp"], make_case,
                              ours, repeats)
    result = {"machine": machine(), "command": "python bench/run.py" + (" --quick" if args.quick else ""),
              "seconds": time.time() - started, "rows": rows}
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    from report import write_markdown

    write_markdown(result, args.markdown)
    print(f"wrote {args.json} and {args.markdown} in {result['seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
