"""The scale group's fuse part (issue 32, item 3): LoRA adapters fused into an SDXL-shaped UNet checkpoint in half
precision, streamed (what `adapters merge --into-base --stream` and `adapters fuse --stream` run), against a plain
copy of the same file. Its own command:

    python bench/scale_fuse.py            # SDXL's UNet (2.57 B parameters, 5.1 GB in float16), 10 LoRAs, ranks 8-128
    python bench/scale_fuse.py --quick    # a scaled-down SDXL shape and 3 LoRAs: a smoke run (CI)

The checkpoint is written once from SDXL's published UNet config with random float16 weights (nothing is
downloaded), hard-linked into a zoo as its base, and the LoRAs (kohya's default UNet targets: attention,
feed-forward, proj_in/out; random factors, float16) are added to that zoo as versions, all kept in `--files` between
runs. Each measurement runs in a fresh child process: a plain copy of the checkpoint (`shutil.copyfile`), the
streamed fuse of every LoRA at weight 1 (`adapterhub_lite.zoo.fuse.fuse_streamed`), then the copy again; peak memory
is the child's VmHWM over its resident set after imports. The parent then checks fused tensors against W + sum of
the deltas computed here in float32.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2
MODEL = "sdxl-unet"

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json: the fields that set shapes
SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048,
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
}
QUICK_UNET = {**SDXL_UNET, "block_out_channels": (32, 64, 64), "transformer_layers_per_block": (1, 1, 2),
              "attention_head_dim": (2, 4, 4), "cross_attention_dim": 32, "addition_time_embed_dim": 8,
              "projection_class_embeddings_input_dim": 32 + 6 * 8, "norm_num_groups": 8}
SHAPES = {"sdxl": SDXL_UNET, "quick": QUICK_UNET}
TARGETS = ["*.to_q", "*.to_k", "*.to_v", "*.to_out.0", "*.ff.net.0.proj", "*.ff.net.2", "*.proj_in", "*.proj_out"]


def ranks_for(count: int, quick: bool) -> list[int]:
    cycle = [2, 4, 8] if quick else [8, 16, 32, 64, 128]
    return [cycle[i % len(cycle)] for i in range(count)]


def build(shape: str = "sdxl") -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**SHAPES[shape])


def bench_registry() -> Any:
    from adapterhub_lite import ModelSpec, PluginManager, Registry, hookimpl
    import adapterhub_lite_lora

    class Models:
        @hookimpl
        def register_models(self, register: Callable[[ModelSpec], None]) -> None:
            register(ModelSpec(name=MODEL, build=build, description="SDXL's UNet shape, random weights"))

    pm = PluginManager()
    pm.add(adapterhub_lite_lora, name="lora")
    pm.add(Models(), name="bench-models")
    pm.check()
    return Registry(pm)


def _status(field: str) -> float:
    """A /proc/self/status figure in MB (VmRSS: resident now, VmHWM: the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


# --- preparation (cached) ------------------------------------------------------------------------------------------
def write_checkpoint(shape: str, path: Path) -> Path:
    """The shape's UNet as a float16 safetensors file, random weights (seeded per tensor), written tensor by
    tensor from a meta-device model: no more memory than the largest tensor."""
    from adapterhub_lite.zoo.streaming import write_streamed

    if path.is_file():
        return path
    with torch.device("meta"):
        skeleton = build(shape)
    specs = [(name, torch.float16, tuple(t.shape)) for name, t in skeleton.state_dict().items()]
    index = {name: i for i, (name, _, _) in enumerate(specs)}

    def fill(name: str, tensor: torch.Tensor) -> None:
        gen = torch.Generator().manual_seed(index[name])
        tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.02)

    write_streamed(path, specs, fill)
    print(f"  wrote {path.name}: {path.stat().st_size / 1e9:.2f} GB", file=sys.stderr, flush=True)
    return path


def prepare_zoo(shape: str, folder: Path, count: int, quick: bool) -> tuple[Path, Path, list[str]]:
    """The checkpoint, a zoo with it as base and `count` LoRA versions; reused when already complete."""
    from adapterhub_lite import AdaptedModel, LoraConfig, Zoo, add_adapter_version
    from adapterhub_lite.zoo.streaming import file_fingerprint, read_tensors

    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = write_checkpoint(shape, folder / f"{shape}-unet-fp16.safetensors")
    root = folder / f"zoo-{shape}"
    names = [f"lora{i:02d}-r{r}" for i, r in enumerate(ranks_for(count, quick))]
    refs = [f"{MODEL}/{n}" for n in names]
    done = root / "complete.json"
    if done.is_file() and json.loads(done.read_text()) == refs:
        return checkpoint, root, refs
    shutil.rmtree(root, ignore_errors=True)
    registry, zoo = bench_registry(), Zoo(root)
    base = zoo.add_version(MODEL, "base", lambda f: os.link(checkpoint, f / "model.safetensors"),
                           {"kind": "base", "config": {"shape": shape}, "fingerprint": file_fingerprint(checkpoint),
                            "task": None})
    with torch.device("meta"):
        model = build(shape)
    model.load_state_dict(read_tensors(checkpoint, list(model.state_dict())), assign=True)
    am = AdaptedModel(model.eval(), base_id=base.ref, registry=registry)
    for i, name in enumerate(names):
        rank = int(name.rsplit("-r", 1)[1])
        am.add_adapter(name, LoraConfig(targets=TARGETS, rank=rank, alpha=rank / 2))
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for _, param in am.adapter_parameters(name):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
        entry = add_adapter_version(registry, zoo, base, name, am, name, {"command": "bench"}, {})
        am.delete_adapter(name)
        print(f"  added {entry.ref}: {entry.weights.stat().st_size / 1e6:.0f} MB", file=sys.stderr, flush=True)
    done.write_text(json.dumps(refs))
    return checkpoint, root, refs


# --- measurement, in a child process -------------------------------------------------------------------------------
def child(checkpoint: str, root: str, refs: list[str], out_dir: str) -> dict[str, Any]:
    from adapterhub_lite import Zoo
    from adapterhub_lite.zoo.fuse import fuse_streamed

    import diffusers.models.unets.unet_2d_condition  # noqa: F401  (the model's code, imported before the start)

    torch.set_num_threads(THREADS)
    registry, zoo = bench_registry(), Zoo(Path(root))
    start_rss = _status("VmRSS")
    copies = []
    for _ in range(2):
        dst = Path(out_dir) / "copy.safetensors"
        started = time.perf_counter()
        shutil.copyfile(checkpoint, dst)
        copies.append(time.perf_counter() - started)
        dst.unlink()
        if not copies[1:]:  # the fuse between the two copies
            dst = Path(out_dir) / "fused.safetensors"
            started = time.perf_counter()
            info = fuse_streamed(registry, zoo, refs, dst)
            fuse_s = time.perf_counter() - started
    peak = _status("VmHWM")
    return {"copy_s": copies, "fuse_s": fuse_s, "start_rss_mb": start_rss, "peak_mb": peak,
            "modules": info["modules"], "bytes": info["bytes"], "products_s": products_alone(zoo, refs)}


def products_alone(zoo: Any, refs: list[str]) -> float:
    """Seconds of the fuse's arithmetic floor: per adapted module, one float32 `addmm` of W with every LoRA's
    factors stacked (the summed rank), on random tensors of the same shapes (after the fuse's peak is read)."""
    from adapterhub_lite.serialization import read_adapter_file

    files = [read_adapter_file(zoo.resolve(ref).weights) for ref in refs]
    shapes: dict[str, list[int]] = {}  # module -> [out, in, summed rank]
    for file in files:
        for key in file.keys:
            module, _, factor = key.rpartition(".")
            info = file.header.tensors[key]
            entry = shapes.setdefault(module, [0, 0, 0])
            if factor == "lora_B":
                entry[0] = info.shape[0]
            elif factor == "lora_A":
                entry[1], entry[2] = info.shape[1], entry[2] + info.shape[0]
    total = 0.0
    for out_features, in_features, rank in shapes.values():
        w, b, a = torch.randn(out_features, in_features), torch.randn(out_features, rank), torch.randn(rank, in_features)
        started = time.perf_counter()
        torch.addmm(w, b, a)
        total += time.perf_counter() - started
    return total


def check_fused(checkpoint: Path, root: Path, refs: list[str], fused: Path, samples: int = 3) -> float:
    """The largest difference, relative to the tensor's largest value, between fused tensors and W + the sum of
    the LoRA deltas computed here in float32 (a few modules, spread over the model), against float16's rounding."""
    from adapterhub_lite import Zoo
    from adapterhub_lite.serialization import read_adapter_file
    from adapterhub_lite.zoo.streaming import read_tensors

    registry = bench_registry()
    files = [read_adapter_file(Zoo(root).resolve(ref).weights) for ref in refs]
    modules = sorted(files[0].meta["targets"])
    worst = 0.0
    for module in modules[:: max(1, len(modules) // samples)][:samples]:
        key = f"{module}.weight"
        want = read_tensors(checkpoint, [key])[key].float()
        for file in files:
            part = file.bundle(registry, modules=[module])
            config = part.configs[module]
            b, a = part.state[f"{module}.lora_B"].float(), part.state[f"{module}.lora_A"].float()
            want += (config.alpha / config.rank) * (b @ a)
        got = read_tensors(fused, [key])[key].float()
        worst = max(worst, ((got - want).abs().max() / want.abs().max()).item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a scaled-down SDXL shape and 3 LoRAs: a smoke run")
    parser.add_argument("--count", type=int, default=None, help="LoRAs fused (default 10; --quick 3)")
    parser.add_argument("--files", type=Path, default=Path(tempfile.gettempdir()) / "adapterhub-scale-files",
                        help="where the checkpoint and the zoo are kept between runs")
    parser.add_argument("--json", type=Path, default=None,
                        help="results (default bench/scale-fuse-results.json; --quick: a temporary file)")
    parser.add_argument("--prepare-only", action="store_true", help="write the checkpoint and the zoo, then stop")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return
    shape = "quick" if args.quick else "sdxl"
    count = args.count or (3 if args.quick else 10)
    started = time.time()
    print(f"scale fuse: {shape}, {count} LoRAs", file=sys.stderr, flush=True)
    checkpoint, root, refs = prepare_zoo(shape, args.files / shape, count, args.quick)
    prepared = time.time()
    if args.prepare_only:
        print(f"scale fuse: prepared in {prepared - started:.0f} s", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(dir=args.files) as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "ADAPTERS_QUIET": "1"}
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps([str(checkpoint), str(root), refs,
                                                                                 tmp])],
                              capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"scale fuse: the child failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["fused_vs_float32"] = check_fused(checkpoint, root, refs, Path(tmp) / "fused.safetensors")
    from adapterhub_lite import Zoo
    from adapterhub_lite.tensorfile import read_header

    largest = max(info.end - info.begin for info in read_header(checkpoint).tensors.values())
    zoo = Zoo(root)
    result = {
        "shape": shape, "unet_config": SHAPES[shape], "count": count, "ranks": ranks_for(count, args.quick),
        "checkpoint_mb": checkpoint.stat().st_size / 1e6, "largest_tensor_mb": largest / 1e6,
        "lora_mb": [zoo.resolve(ref).weights.stat().st_size / 1e6 for ref in refs], "threads": THREADS,
        "prepare_s": prepared - started, "wall_s": time.time() - started, **row, **machine(),
    }
    target = args.json or (Path(tempfile.gettempdir()) / "scale-fuse-quick.json" if args.quick
                           else ROOT / "bench" / "scale-fuse-results.json")
    target.write_text(json.dumps(result, indent=1, default=list) + "\n")
    growth = result["peak_mb"] - result["start_rss_mb"]
    print(f"scale fuse: fused {result['modules']} modules in {result['fuse_s']:.1f} s (copy "
          f"{min(result['copy_s']):.1f} s), peak +{growth:.0f} MB (bound {2 * result['largest_tensor_mb'] + 300:.0f}), "
          f"fused vs float32 {result['fused_vs_float32']:.1e}; wrote {target}", file=sys.stderr)


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    return {"cpu": cpu, "avx512": " avx512f" in Path("/proc/cpuinfo").read_text(), "torch": torch.__version__,
            "commit": commit.strip() or "unknown (not run from a git checkout: use `git worktree add`)"}


if __name__ == "__main__":
    main()
