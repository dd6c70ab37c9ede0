"""The scale group (issue 32): a Stable-Diffusion-1.5-shaped UNet and CLIP text encoder with dozens of kohya LoRA
files, ours and diffusers + PEFT side by side. Its own command, not part of `bench/run.py`:

    python bench/scale.py                     # SD-1.5 shapes, 50 files of ranks 8-128, float32 and float16
    python bench/scale.py --quick             # small SD-shaped models and 6 files: a smoke run (CI)
    python bench/scale.py --dtypes bfloat16   # other base dtypes

The models are built from the published configs below with random weights (nothing is downloaded). The files
are written once per shape into a cache folder (`--files`), in float16 as people share them, with our kohya
export (which diffusers loads with our outputs: tests/test_sd_interop.py). Each side runs in a fresh child
process, so the memory figures are its own: resident memory (VmRSS) before and after loading.

Per dtype and side, one child: the bare forward (text encoder on 77 tokens, then the UNet on a latent) timed
first; then every file loaded (ours: the kohya format's import and `add_bundle`; diffusers:
`StableDiffusionLoraLoaderMixin.lora_state_dict` + `load_lora_into_unet` + `load_lora_into_text_encoder`, what
`load_lora_weights` runs); then `--switches` times a new active set of 4 with new weights (ours `set_active`;
diffusers `set_adapters` on the UNet, PEFT's weights on the text encoder), the first forward after it, and the
steady forward (median of 3). The parent compares the first switch's outputs across sides and dtypes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from timing import median_time

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2

# Stable Diffusion 1.5's published configs (runwayml/stable-diffusion-v1-5: unet/config.json and
# text_encoder/config.json), the fields that set shapes
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
}
SD15_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
             "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
             "projection_dim": 768}
QUICK_UNET = {**SD15_UNET, "sample_size": 16, "layers_per_block": 1, "block_out_channels": (32, 64, 64, 64),
              "cross_attention_dim": 32, "attention_head_dim": 4, "norm_num_groups": 8}
QUICK_TEXT = {**SD15_TEXT, "vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "projection_dim": 32}
SHAPES = {"sd15": (SD15_UNET, SD15_TEXT), "quick": (QUICK_UNET, QUICK_TEXT)}
# kohya's default SD targets: the transformer blocks' attention and feed-forward Linears and proj_in/out, every
# Linear of the text encoder's layers (as in tests/test_sd_interop.py)
TARGETS = ["unet.*.to_q", "unet.*.to_k", "unet.*.to_v", "unet.*.to_out.0", "unet.*.ff.net.0.proj", "unet.*.ff.net.2",
           "unet.*.proj_in", "unet.*.proj_out", "text_encoder.*.q_proj", "text_encoder.*.k_proj",
           "text_encoder.*.v_proj", "text_encoder.*.out_proj", "text_encoder.*.fc1", "text_encoder.*.fc2"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ACTIVE = 4  # adapters live at once after each switch


def _status(field: str) -> int:
    """A /proc/self/status figure in kB (VmRSS: resident now, VmHWM: the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _rss_mb() -> float:
    gc.collect()
    return _status("VmRSS") / 1024


def build(shape: str, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The UNet and the text encoder of a shape, random weights (seeded), in `dtype`, eval mode."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_config, text_config = SHAPES[shape]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config)
    torch.manual_seed(1)
    text = CLIPTextModel(CLIPTextConfig(**text_config, bos_token_id=0, eos_token_id=2, pad_token_id=1))
    return unet.to(dtype).eval(), text.to(dtype).eval()


def inputs(shape: str, latent: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    vocab = SHAPES[shape][1]["vocab_size"]
    return {"ids": torch.randint(3, vocab, (1, 77), generator=gen),
            "latent": torch.randn(1, 4, latent, latent, generator=gen).to(dtype), "t": torch.tensor([500])}


def forward(unet: torch.nn.Module, text: torch.nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        hidden = text(x["ids"]).last_hidden_state
        return unet(x["latent"], x["t"], encoder_hidden_states=hidden).sample


def timed(fn: Any) -> float:
    """Median seconds of 3 calls (the warm-up is the caller's)."""
    return median_time(fn, 3, warmup=0)


# --- the files ---------------------------------------------------------------------------------------------------
def ranks_for(count: int, quick: bool) -> list[int]:
    cycle = [2, 4, 8] if quick else [8, 16, 32, 64, 128]
    return [cycle[i % len(cycle)] for i in range(count)]


def make_files(shape: str, count: int, folder: Path, quick: bool) -> list[Path]:
    """`count` kohya files for the shape, ranks cycling, random factors, float16 tensors; kept in `folder` and
    reused when already there."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from adapterhub_lite import AdaptedModel, LoraConfig, get_registry
    from adapterhub_lite_hf.sources import PipelineModules

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{shape}-{i:02d}-r{r}.safetensors" for i, r in enumerate(ranks_for(count, quick))]
    missing = [p for p in paths if not p.is_file()]
    if not missing:
        return paths
    unet, text = build(shape, torch.float32)
    am = AdaptedModel(PipelineModules({"unet": unet, "text_encoder": text}), registry=get_registry())
    for path in missing:
        rank = int(path.stem.rsplit("-r", 1)[1])
        index = int(path.stem.split("-")[1])
        am.add_adapter("f", LoraConfig(targets=TARGETS, rank=rank, alpha=rank / 2), activate=False)
        gen = torch.Generator().manual_seed(100 + index)
        with torch.no_grad():
            for _, param in am.adapter_parameters("f"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
        raw = am.export("f", format="kohya", dest=folder / "raw.safetensors")
        with safe_open(str(raw), "pt") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k).to(torch.float16) for k in f.keys()}
        save_file(tensors, str(path.with_suffix(".part")), metadata=metadata)
        os.replace(path.with_suffix(".part"), path)  # a run stopped half-way leaves no half file to reuse
        raw.unlink()
        am.delete_adapter("f")
        print(f"  wrote {path.name}: {path.stat().st_size / 1e6:.1f} MB", file=sys.stderr, flush=True)
    return paths


# --- one side, in a child process ----------------------------------------------------------------------------------
def child(side: str, shape: str, dtype_name: str, files: list[str], latent: int, switches: int,
          out_dir: str) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    dtype = DTYPES[dtype_name]
    unet, text = build(shape, dtype)
    x = inputs(shape, latent, dtype)
    for _ in range(3):  # oneDNN's warm-up per shape
        forward(unet, text, x)
    base_s = timed(lambda: forward(unet, text, x))
    names = [f"f{i:02d}" for i in range(len(files))]
    rss_before = _rss_mb()
    start = time.perf_counter()
    if side == "ours":
        from adapterhub_lite import AdaptedModel, get_registry
        from adapterhub_lite_hf.sources import PipelineModules

        am = AdaptedModel(PipelineModules({"unet": unet, "text_encoder": text}), registry=get_registry())
        kohya = am.registry.get_format("kohya")
        for name, path in zip(names, files):
            am.add_bundle(kohya.import_(Path(path), am), name, activate=False)

        def switch(active: list[str], weights: list[float]) -> None:
            am.set_active(active, weights)
    else:
        from diffusers.loaders import StableDiffusionLoraLoaderMixin as SD
        from diffusers.utils.peft_utils import set_weights_and_activate_adapters

        for name, path in zip(names, files):
            state, alphas, metadata = SD.lora_state_dict(path, return_lora_metadata=True)
            SD.load_lora_into_unet(state, alphas, unet, adapter_name=name, metadata=metadata)
            SD.load_lora_into_text_encoder(state, alphas, text, adapter_name=name, metadata=metadata)

        def switch(active: list[str], weights: list[float]) -> None:
            unet.set_adapters(active, weights=weights)
            set_weights_and_activate_adapters(text, active, weights)
    load_s = time.perf_counter() - start
    rss_loaded = _rss_mb()
    rng = random.Random(7)

    def switched_forward() -> tuple[dict[str, float], torch.Tensor]:
        """A new active set of ACTIVE at random weights, then the first forward: both timed."""
        active = rng.sample(names, ACTIVE)
        weights = [round(rng.uniform(0.3, 1.0), 3) for _ in active]
        start = time.perf_counter()
        switch(active, weights)
        switched = time.perf_counter()
        out = forward(unet, text, x)
        return {"switch_s": switched - start, "first_forward_s": time.perf_counter() - switched}, out

    rounds = []
    for i in range(switches):
        timing, out = switched_forward()
        rounds.append({**timing, "steady_s": timed(lambda: forward(unet, text, x))})
        if i == 0:
            from safetensors.torch import save_file

            save_file({"out": out.float().contiguous()}, str(Path(out_dir) / f"{side}-{dtype_name}.safetensors"))
    row: dict[str, Any] = {
        "side": side, "shape": shape, "dtype": dtype_name, "files": len(files), "latent": latent,
        "file_mb": sum(Path(p).stat().st_size for p in files) / 1e6, "base_s": base_s, "load_s": load_s,
        "rss_model_mb": rss_before, "rss_growth_mb": rss_loaded - rss_before, "rounds": rounds,
        "model_mb": sum(p.numel() * p.element_size() for m in (unet, text) for p in m.parameters()) / 1e6,
    }
    if side == "ours":
        row["cache_mb"] = am.cache_bytes / 1e6
        from adapterhub_lite import LayerPolicy

        am.policy = LayerPolicy(cache_after=2)  # the first call after a switch on the low-rank path, no fold
        forward(unet, text, x)
        row["rounds_cache_after_2"] = [switched_forward()[0] for _ in range(switches)]
        am.policy = LayerPolicy()
        with torch.no_grad():  # folded vs unfolded, the last active set
            unfolded = forward(unet, text, x)
            am.fold()
            row["fold_max_diff"] = (forward(unet, text, x).float() - unfolded.float()).abs().max().item()
            am.unfold()
            row["fold_scale"] = unfolded.float().abs().max().item()
    return row


def run_child(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "ADAPTERS_QUIET": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:
        raise SystemExit(f"scale: the {args[0]} child failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    """Per dtype: both sides' figures and the ratios the targets read, the first switch's output differences."""
    from safetensors.torch import load_file

    def out(side: str, dtype: str) -> torch.Tensor | None:
        path = out_dir / f"{side}-{dtype}.safetensors"
        return load_file(str(path))["out"] if path.is_file() else None

    reference = out("ours", "float32")
    table = []
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        ours = next(r for r in rows if r["dtype"] == dtype and r["side"] == "ours")
        theirs = next((r for r in rows if r["dtype"] == dtype and r["side"] == "diffusers"), None)
        entry: dict[str, Any] = {"dtype": dtype, "ours": ours, "diffusers": theirs}
        mine = out("ours", dtype)
        scale = mine.abs().max().item() if mine is not None else 1.0
        if theirs is not None and out("diffusers", dtype) is not None:
            entry["ours_vs_diffusers"] = (mine - out("diffusers", dtype)).abs().max().item() / scale
        if reference is not None and dtype != "float32":
            entry["ours_vs_float32"] = (mine - reference).abs().max().item() / scale
        table.append(entry)
    return {"table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small SD-shaped models and 6 files: a smoke run")
    parser.add_argument("--count", type=int, default=None, help="LoRA files (default 50; --quick 6)")
    parser.add_argument("--dtypes", default=None, help="base dtypes, comma-separated (default float32,float16)")
    parser.add_argument("--latent", type=int, default=None, help="latent side (default 16; --quick 8)")
    parser.add_argument("--switches", type=int, default=None, help="active-set switches timed (default 5)")
    parser.add_argument("--files", type=Path, default=Path(tempfile.gettempdir()) / "adapterhub-scale-files",
                        help="where the generated LoRA files are kept between runs")
    parser.add_argument("--json", type=Path, default=None, help="results (default bench/scale-results.json; "
                        "--quick: a temporary file)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return
    shape = "quick" if args.quick else "sd15"
    count = args.count or (6 if args.quick else 50)
    latent = args.latent or (8 if args.quick else 16)
    switches = args.switches or (2 if args.quick else 5)
    dtypes = (args.dtypes or "float32,float16").split(",")
    started = time.time()
    print(f"scale: {shape}, {count} files, dtypes {dtypes}", file=sys.stderr, flush=True)
    files = [str(p) for p in make_files(shape, count, args.files / shape, args.quick)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in dtypes:
            for side in ("ours", "diffusers"):
                row = run_child([side, shape, dtype, files, latent, switches, tmp])
                print(f"  {side} {dtype}: load {row['load_s']:.2f} s, +{row['rss_growth_mb']:.0f} MB, first after "
                      f"switch {statistics.median(r['first_forward_s'] for r in row['rounds']):.2f} s, steady "
                      f"{statistics.median(r['steady_s'] for r in row['rounds']):.2f} s (base {row['base_s']:.2f})",
                      file=sys.stderr, flush=True)
                rows.append(row)
        summary = summarize(rows, Path(tmp))
    result = {"shape": shape, "unet_config": SHAPES[shape][0], "text_config": SHAPES[shape][1], "count": count,
              "ranks": sorted(set(ranks_for(count, args.quick))), "latent": latent, "switches": switches,
              "threads": THREADS, "wall_s": time.time() - started, "rows": rows, **summary, **machine()}
    target = args.json or (Path(tempfile.gettempdir()) / "scale-quick.json" if args.quick
                           else ROOT / "bench" / "scale-results.json")
    target.write_text(json.dumps(result, indent=1, default=list) + "\n")
    print(f"scale: {time.time() - started:.0f} s; wrote {target}", file=sys.stderr)
    if target == ROOT / "bench" / "scale-results.json":  # the page shows the committed run's tables
        sys.path.insert(0, str(ROOT / "bench"))
        import report

        report.write_markdown(json.loads((ROOT / "bench" / "results.json").read_text()),
                              ROOT / "docs" / "benchmarks.md")
        print("scale: rendered docs/benchmarks.md", file=sys.stderr)


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    flags = Path("/proc/cpuinfo").read_text()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    return {"cpu": cpu, "avx512": " avx512f" in flags, "torch": torch.__version__, "commit": commit.strip()}


if __name__ == "__main__":
    main()
