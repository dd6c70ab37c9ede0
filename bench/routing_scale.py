"""Issue 33's routing rows: one mixed batch in which every sample names its adapter, at 8, 32 and 128 adapters,
ours (`with am.routing(names): am(x)`) and PEFT (`model(x, adapter_names=names)`) side by side in the same rounds,
against the bare base on the same batch. Its own command:

    python bench/routing_scale.py          # RichBoyNet, the DDPM UNet and a Llama-shaped decoder (374 M parameters)
    python bench/routing_scale.py --quick  # a 2-layer decoder, 4 and 8 adapters: a smoke run (CI)

Then every first-party family routed (item 1): LoRA, DoRA, LoHa, LoKr and (IA)^3 on RichBoyNet's Linears and the
UNet's convs, a new mix each call, against the bare base and against the core's sample-by-sample form (what a
family without a routed form of its own gets), outputs compared.

The decoder is built from its config with random weights (nothing is downloaded; the shape is written below):
one decode step for 64 sequences, each with a 16-token prompt in the KV cache and its own adapter (LoRA rank 8 on
q, k, v, o, gate, up and down of every layer). Every adapter's B is random (a fresh LoRA's is zero) and PEFT gets
exactly our factors, so the two routed outputs are compared as well as timed. Ratios are per round (paired), so
the machine's drift cancels; compare them within one run only.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import make_case, ours, sync, theirs  # noqa: E402
from scale_fuse import machine  # noqa: E402
from timing import interleaved, medians, paired_ratio  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2
BATCH, PROMPT = 64, 16
# a Llama-shaped decoder of a few hundred million parameters (issue 33: hidden 1024, 24 layers, 16 heads)
DECODER = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 24, "num_attention_heads": 16,
           "num_key_value_heads": 16, "vocab_size": 32000, "max_position_embeddings": 256,
           "tie_word_embeddings": False}
QUICK_DECODER = {**DECODER, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1000}
MIXES = 16  # the random batches a "new mix each call" cycles through
# the paged row: adapters registered in a zoo, how many one batch names (one per sequence), the pager's budget
PAGED = {"registered": 1000, "hot": 64, "budget_mb": 4096}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# item 1's rows: every first-party family routed on RichBoyNet's Linears and the UNet's convs, rank 8 where the
# family has one; (IA)^3 scales the outputs
FAMILY_OPTIONS: dict[str, dict[str, Any]] = {"lora": {"rank": 8, "alpha": 16.0}, "dora": {"rank": 8, "alpha": 16.0},
                                             "loha": {"rank": 8, "alpha": 16.0}, "lokr": {"rank": 8, "alpha": 16.0},
                                             "ia3": {}}


class DecodeStep(nn.Module):
    """One decode step of a causal LM for a batch whose prompts sit in a KV cache: the call timed, with the cache
    put back after each call so every call sees the same prompt."""

    def __init__(self, lm: nn.Module, step: torch.Tensor, cache: Any) -> None:
        super().__init__()
        self.lm, self.step, self.cache = lm, step, cache

    def forward(self, **kwargs: Any) -> torch.Tensor:
        logits = self.lm(self.step, past_key_values=self.cache, use_cache=True, **kwargs).logits
        self.cache.crop(-1)
        return logits


def decoder_case(config: dict[str, Any]) -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(**config)).eval()
    prompts = torch.randint(0, config["vocab_size"], (BATCH, PROMPT))
    with torch.inference_mode():
        cache = lm(prompts, use_cache=True).past_key_values
    targets = [f"model.layers.{i}.{'self_attn' if p.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{p}"
               for i in range(config["num_hidden_layers"]) for p in PROJECTIONS]
    return {"name": "llama-decoder", "model": lm, "step": torch.randint(0, config["vocab_size"], (BATCH, 1)),
            "cache": cache, "targets": targets, "config": config,
            "patterns": [f"model.layers.*.{'self_attn' if p in PROJECTIONS[:4] else 'mlp'}.{p}" for p in PROJECTIONS],
            "parameters_m": sum(p.numel() for p in lm.parameters()) / 1e6}


def row(case: dict[str, Any], n: int, repeats: int) -> dict[str, Any]:
    """Base, ours routed and PEFT routed on one batch, `n` adapters spread evenly over its samples."""
    base_model, targets = case["model"], case["targets"]
    batch = BATCH if case["name"] != "ddpm-unet" else 16
    names = [f"a{i % n}" for i in range(batch)]
    # serving: every call a new batch, each sample naming one of the n at random (seeded; the same draws for both)
    draws = random.Random(n)
    mixes = [[f"a{draws.randrange(n)}" for _ in range(batch)] for _ in range(MIXES)]
    turn = {"ours": 0, "peft": 0}
    am = ours(copy.deepcopy(base_model), targets, n, patterns=case.get("patterns"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = theirs(copy.deepcopy(base_model), targets, n)
    plain = [t for t in targets if hasattr(am.layers()[t].adapters["a0"], "lora_A")]  # MHA: PEFT cannot route it
    sync(am, pm, plain, [f"a{i}" for i in range(n)])
    if case["name"] == "llama-decoder":
        calls = [DecodeStep(m, case["step"], case["cache"]) for m in (base_model, am.model, pm)]
        base_call, ours_call, peft_call = calls[0], calls[1], calls[2]
        args: tuple = ()
    else:
        args = tuple(a[:len(names)] if a.shape[0] >= len(names) else a.repeat(len(names) // a.shape[0],
                                                                             *[1] * (a.dim() - 1))
                     for a in case["args"])
        base_call, ours_call, peft_call = base_model, am.model, pm

    def routed() -> torch.Tensor:
        with am.routing(names):
            return ours_call(*args)

    def peft_routed() -> torch.Tensor:
        return peft_call(*args, adapter_names=names)

    def mixed() -> torch.Tensor:
        turn["ours"] += 1
        with am.routing(mixes[turn["ours"] % MIXES]):
            return ours_call(*args)

    def peft_mixed() -> torch.Tensor:
        turn["peft"] += 1
        return peft_call(*args, adapter_names=mixes[turn["peft"] % MIXES])

    with torch.inference_mode():
        try:
            want = peft_routed()
            peft_note = ""
        except (TypeError, ValueError) as exc:  # PEFT cannot route nn.MultiheadAttention
            want, peft_note = None, " ".join(str(exc).split())[:200]
        got = routed()
        difference = (float((got - want).abs().max() / want.abs().max()) if want is not None else None)
        fns = [lambda: base_call(*args), routed, mixed] + ([peft_routed, peft_mixed] if want is not None else [])
        times = interleaved(fns, repeats)
    t = medians(times)
    peft = want is not None
    result = {"model": case["name"], "adapters": n, "batch": len(names), "base_ms": t[0] * 1e3,
              "routed_ms": t[1] * 1e3, "vs_base": paired_ratio(times[1], times[0]), "peft_note": peft_note,
              "mixed_ms": t[2] * 1e3, "mixed_vs_base": paired_ratio(times[2], times[0]),
              "distinct_per_mix": sum(len(set(m)) for m in mixes) / MIXES,
              "peft_ms": t[3] * 1e3 if peft else None,
              "peft_vs_base": paired_ratio(times[3], times[0]) if peft else None,
              "peft_vs_ours": paired_ratio(times[3], times[1]) if peft else None,
              "peft_mixed_ms": t[4] * 1e3 if peft else None,
              "peft_mixed_vs_ours": paired_ratio(times[4], times[2]) if peft else None,
              "ours_vs_peft_output": difference,
              # what a new mix reads beside the base weights: its adapters' factors, against the base's own bytes
              "adapter_mb": am.adapter_bytes("a0") / 2**20,
              "mixed_factor_share": (sum(len(set(m)) for m in mixes) / MIXES * am.adapter_bytes("a0")
                                     / sum(p.numel() * p.element_size() for p in base_model.parameters()))}
    print(f"routing {case['name']} x{n}: base {result['base_ms']:.1f} ms, ours {result['routed_ms']:.1f} "
          f"({result['vs_base']:.2f}x; a new mix each call {result['mixed_ms']:.1f}, {result['mixed_vs_base']:.2f}x), "
          "peft "
          + (f"{result['peft_ms']:.1f} ({result['peft_vs_base']:.2f}x; {result['peft_vs_ours']:.2f}x ours), "
             f"outputs differ by {difference:.1e}" if want is not None else f"fails: {peft_note[:80]}"),
          file=sys.stderr, flush=True)
    return result


def family_row(case: dict[str, Any], family: str, n: int, repeats: int) -> dict[str, Any]:
    """Item 1: one family's routed batch, a new mix of `n` adapters every call, against the bare base and
    against the core's sample-by-sample form (each adapter's delta on its own samples: what a family without a
    routed form of its own gets), on the same mixes in the same rounds; the two outputs compared."""
    from adapterhub_lite import AdaptedModel, AdapterLayer, get_registry

    registry = get_registry()
    batch = BATCH if case["name"] != "ddpm-unet" else 16
    targets = case["family_targets"]
    am = AdaptedModel(copy.deepcopy(case["model"]))
    config = registry.config_class(family)(targets=["re:" + "|".join(t.replace(".", r"\.") for t in targets)],
                                           **FAMILY_OPTIONS[family])
    for i in range(n):
        am.add_adapter(f"a{i}", config, activate=False)
    gen = torch.Generator().manual_seed(n)
    with torch.no_grad():  # every factor away from its no-op start
        for param in am.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.01)
    draws = random.Random(n)
    mixes = [[f"a{draws.randrange(n)}" for _ in range(batch)] for _ in range(MIXES)]
    args = tuple(a[:batch] if a.shape[0] >= batch else a.repeat(batch // a.shape[0], *[1] * (a.dim() - 1))
                 for a in case["args"])
    kinds = {type(kind) for layer in am.layers().values() for kind in layer.kinds}
    turn = {"own": 0, "core": 0}

    def routed(mix: list[str]) -> torch.Tensor:
        with am.routing(mix):
            return am.model(*args)

    def core_form(mix: list[str]) -> torch.Tensor:
        kept = {kind: kind.__dict__.get("add_deltas_routed") for kind in kinds}
        for kind in kinds:
            kind.add_deltas_routed = AdapterLayer.add_deltas_routed
        try:
            return routed(mix)
        finally:
            for kind, own in kept.items():
                delattr(kind, "add_deltas_routed") if own is None else setattr(kind, "add_deltas_routed", own)

    def own_mixed() -> torch.Tensor:
        turn["own"] += 1
        return routed(mixes[turn["own"] % MIXES])

    def core_mixed() -> torch.Tensor:
        turn["core"] += 1
        return core_form(mixes[turn["core"] % MIXES])

    with torch.inference_mode():
        got, want = routed(mixes[0]), core_form(mixes[0])
        difference = float((got - want).abs().max() / want.abs().max())
        times = interleaved([lambda: case["model"](*args), own_mixed, core_mixed], repeats)
    t = medians(times)
    result = {"model": case["name"], "family": family, "adapters": n, "batch": batch, "base_ms": t[0] * 1e3,
              "mixed_ms": t[1] * 1e3, "mixed_vs_base": paired_ratio(times[1], times[0]),
              "core_ms": t[2] * 1e3, "core_vs_base": paired_ratio(times[2], times[0]),
              "distinct_per_mix": sum(len(set(m)) for m in mixes) / MIXES, "vs_core_output": difference,
              "options": FAMILY_OPTIONS[family]}
    print(f"routing {family} on {case['name']} x{n}: base {result['base_ms']:.1f} ms, a new mix each call "
          f"{result['mixed_ms']:.1f} ({result['mixed_vs_base']:.2f}x), the core's sample-by-sample form "
          f"{result['core_ms']:.1f} ({result['core_vs_base']:.2f}x), outputs differ by {difference:.1e}",
          file=sys.stderr, flush=True)
    return result


def peft_routing() -> dict[str, dict[str, Any]]:
    """What PEFT does with `adapter_names` for each family it has (two adapters on one Linear, random factors,
    two samples naming one each): the largest difference from each sample run alone with its adapter set, or
    the error it raises. Small enough to run in every form of this command."""
    import peft

    configs = {"lora": peft.LoraConfig(r=4, target_modules=["0"], init_lora_weights=False),
               "dora": peft.LoraConfig(r=4, target_modules=["0"], use_dora=True, init_lora_weights=False),
               "loha": peft.LoHaConfig(r=4, target_modules=["0"], init_weights=False),
               "lokr": peft.LoKrConfig(r=4, target_modules=["0"], init_weights=False),
               "ia3": peft.IA3Config(target_modules=["0"], feedforward_modules=[], init_ia3_weights=False)}
    found: dict[str, dict[str, Any]] = {}
    for family, config in configs.items():
        torch.manual_seed(0)
        pm = peft.get_peft_model(nn.Sequential(nn.Linear(8, 8)), config, adapter_name="a")
        pm.add_adapter("b", config)
        pm.eval()
        x = torch.randn(2, 8)
        with torch.no_grad():
            try:
                routed = pm(x, adapter_names=["a", "b"])
            except (TypeError, ValueError) as exc:
                found[family] = {"error": " ".join(str(exc).split())[:200]}
                continue
            alone = []
            for i, name in enumerate(["a", "b"]):
                pm.set_adapter(name)
                alone.append(pm(x[i:i + 1]))
        want = torch.cat(alone)
        found[family] = {"max_difference_vs_alone": float((routed - want).abs().max() / want.abs().max())}
        print(f"peft adapter_names with {family}: differs from each sample alone by "
              f"{found[family]['max_difference_vs_alone']:.1e} (relative)", file=sys.stderr, flush=True)
    return found


def rss_mb(field: str = "VmRSS") -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def write_paged_zoo(case: dict[str, Any], folder: Path, registered: int) -> dict[str, Any]:
    """Issue 33, item 3's zoo: the decoder's base and `registered` rank-8 adapters on it (seeded random factors,
    B nonzero), written through the zoo as any adapter is."""
    from adapterhub_lite import AdaptedModel, LoraConfig, Zoo, state_fingerprint
    from safetensors.torch import save_file

    model, started = case["model"], time.time()
    config = LoraConfig(targets=case["patterns"], rank=8, alpha=16)
    zoo = Zoo(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    fingerprint = state_fingerprint(state)
    base = zoo.add_version("llama-bench", "base", lambda f: save_file(state, str(f / "model.safetensors")),
                           {"kind": "base", "config": case["config"], "fingerprint": fingerprint, "task": None})
    state = {}  # the base's tensors are the model's; the contiguous copies go
    writer = AdaptedModel(model, base_id=base.ref)
    writer.add_adapter("w", config)
    factors = [p for _, p in writer.adapter_parameters("w")]
    adapter_mb = sum(p.numel() * p.element_size() for p in factors) / 2**20
    card = {"kind": "adapter", "family": "lora", "config": config.to_dict(), "modules": writer.adapters["w"].modules,
            "base": {"ref": base.ref, "version": base.version, "fingerprint": fingerprint},
            "parents": [base.ref], "parameters": sum(p.numel() for p in factors)}
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for i in range(registered):
            for p in factors:  # every adapter its own factors (B nonzero: a fresh LoRA's is zero)
                p.copy_(torch.randn(p.shape, generator=gen) * (0.01 if p.shape[0] > p.shape[1] else 0.05))
            zoo.add_version("llama-bench", f"a{i}", lambda f: writer.save_adapter(  # the base read once
                "w", f / "adapter.safetensors", recheck_base=i == 0), card)
    writer.unload()
    write_s = time.time() - started
    print(f"paged: wrote {registered} adapters ({adapter_mb:.1f} MB each) to a zoo in {write_s:.0f} s",
          file=sys.stderr, flush=True)
    return {"adapter_mb": adapter_mb, "zoo_write_s": write_s, "base_ref": base.ref}


def paged_row(case: dict[str, Any], folder: Path, registered: int, hot: int, budget_mb: int, repeats: int,
              written: dict[str, Any]) -> dict[str, Any]:
    """Issue 33, item 3: the zoo's `registered` adapters served through an AdapterPager with a byte budget, in a
    process of its own (its resident memory is the served model's alone). Timed: a batch naming `hot` of them,
    after their first use, and a new random mix of those `hot` every call, against the bare base in the same
    rounds; the first use (loading them from the zoo); then a sweep naming every registered adapter, `hot` new
    ones a batch (each batch pages them in, evicting the least recently used), with resident memory read after
    the first use, after the first two batches and after the last."""
    from adapterhub_lite import AdaptedModel, AdapterPager, Zoo, zoo_adapters

    model, step, cache = case["model"], case["step"], case["cache"]
    zoo, adapter_mb, write_s = Zoo(folder), written["adapter_mb"], written["zoo_write_s"]
    base_ref = written["base_ref"]
    am = AdaptedModel(copy.deepcopy(model), base_id=base_ref)
    pager = AdapterPager(am, zoo_adapters(zoo, "llama-bench"), budget_mb * 2**20)
    draws = random.Random(registered)
    chosen = [f"a{i}" for i in draws.sample(range(registered), hot)]
    mixes = [[draws.choice(chosen) for _ in range(BATCH)] for _ in range(MIXES)]
    names = (chosen * (BATCH // hot + 1))[:BATCH]
    turn = [0]
    base_call, ours_call = DecodeStep(model, step, cache), DecodeStep(am.model, step, cache)
    rss_base, rss_after = rss_mb(), {}
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here: the paged serving's peak alone

    def fixed() -> torch.Tensor:
        with pager.routing(names):
            return ours_call()

    def mixed() -> torch.Tensor:
        turn[0] += 1
        with pager.routing(mixes[turn[0] % MIXES]):
            return ours_call()

    with torch.inference_mode():
        start = time.perf_counter()
        pager.hold(names)
        first_use_s = time.perf_counter() - start
        rss_after[hot] = rss_mb() - rss_base
        bare = base_call()
        times = interleaved([base_call, fixed, mixed], repeats)
        loads_hot = pager.loads
        got = fixed()
        sweep, chunk_s, series, halfway = list(range(registered)), [], [], {}
        for k in range(0, registered, hot):  # every batch `hot` new ones (the last wraps to the first few)
            batch = [f"a{i % registered}" for i in sweep[k:k + hot] + list(range(registered, k + hot))]
            batch = (batch * (BATCH // len(batch) + 1))[:BATCH]
            start = time.perf_counter()
            with pager.routing(batch):
                ours_call()
            chunk_s.append(time.perf_counter() - start)
            series.append((k + hot, rss_mb() - rss_base, pager.held_bytes / 2**20))  # after each batch
            if k // hot == 1:
                rss_after[2 * hot] = rss_mb() - rss_base
            if k + hot >= registered // 2 and str(registered // 2) not in halfway:
                halfway[str(registered // 2)] = rss_mb() - rss_base
        rss_after[registered] = rss_mb() - rss_base
        peak_growth = rss_mb("VmHWM") - rss_base
        # the same batch with the adapters held for good (no pager): what paging must not change
        held = AdaptedModel(copy.deepcopy(model))
        for name in chosen:
            held.load_adapter(zoo_adapters(zoo, "llama-bench")(name), name=name, activate=False)
        with held.routing(names):
            want = DecodeStep(held.model, step, cache)()
        del held
        difference = float((got - want).abs().max() / want.abs().max())
    t = medians(times)
    result = {"model": case["name"], "registered": registered, "hot": hot, "batch": BATCH,
              "budget_mb": budget_mb, "adapter_mb": adapter_mb, "zoo_write_s": write_s,
              "factor_share": hot * adapter_mb * 2**20 / sum(p.numel() * p.element_size()
                                                           for p in model.parameters()),
              "first_use_s": first_use_s, "loads_for_hot": loads_hot,
              "base_ms": t[0] * 1e3, "routed_ms": t[1] * 1e3, "vs_base": paired_ratio(times[1], times[0]),
              "mixed_ms": t[2] * 1e3, "mixed_vs_base": paired_ratio(times[2], times[0]),
              "distinct_per_mix": sum(len(set(m)) for m in mixes) / MIXES,
              "paged_vs_held_output": difference, "bare_vs_routed": float((got - bare).abs().max()),
              "sweep_batches": len(chunk_s), "sweep_batch_s": sorted(chunk_s)[len(chunk_s) // 2],
              "loads": pager.loads, "evictions": pager.evictions, "held_after": len(pager.held),
              "held_mb_after": pager.held_bytes / 2**20,
              "rss_growth_mb": {str(k): v for k, v in rss_after.items()}, "rss_base_mb": rss_base,
              "peak_growth_mb": peak_growth, "rss_halfway_mb": halfway,
              "sweep_series": series}  # (adapters swept, RSS growth MB, held MB) after each batch
    print(f"paged {registered} registered, {hot} a batch: base {result['base_ms']:.1f} ms, ours "
          f"{result['routed_ms']:.1f} ({result['vs_base']:.2f}x; new mix {result['mixed_vs_base']:.2f}x), first use "
          f"{first_use_s:.1f} s, sweep {result['sweep_batch_s']:.2f} s a batch of new ones, held "
          f"{result['held_mb_after']:.0f} MB of {budget_mb}, RSS growth {result['rss_growth_mb']}, output vs held "
          f"{difference:.1e}", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 2-layer decoder and 4 and 8 adapters: a smoke run")
    parser.add_argument("--paged-only", action="store_true", help="only the paged row (1,000 adapters in a zoo)")
    parser.add_argument("--no-families", action="store_true", help="without the per-family rows (item 1)")
    parser.add_argument("--paged-child", type=Path, default=None, help=argparse.SUPPRESS)  # the paged row's process
    parser.add_argument("--json", type=Path, default=None,
                        help="results (default bench/routing-results.json; --quick: a temporary file)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    torch.set_flush_denormal(True)
    warnings.simplefilter("ignore")
    counts = (4, 8) if args.quick else (8, 32, 128)
    if args.paged_only or args.paged_child:
        counts = ()
    started = time.time()
    rows = []
    paged = None
    for name in ([] if args.paged_only or args.paged_child else ["llama-decoder"] if args.quick
                 else ["richboynet", "ddpm-unet", "llama-decoder"]):
        case = decoder_case(QUICK_DECODER if args.quick else DECODER) if name == "llama-decoder" else make_case(name)
        repeats = 3 if args.quick else (9 if name == "llama-decoder" else 30)
        for n in counts:
            rows.append(row(case, n, repeats))
        del case
    families = []
    peft_families = None if args.paged_only or args.paged_child else peft_routing()
    for name in ([] if args.paged_only or args.paged_child or args.no_families
                 else ["richboynet"] if args.quick else ["richboynet", "ddpm-unet"]):
        case = make_case(name)
        case["family_targets"] = (case["targets"] if name == "richboynet" else
                                  [t for t in case["targets"] if t.endswith((".conv1", ".conv2"))])  # convs only
        for family in FAMILY_OPTIONS:
            for n in counts:
                families.append(family_row(case, family, n, 3 if args.quick else 12))
    if args.paged_child:  # the paged row's own process, on the zoo the parent wrote
        case = decoder_case(QUICK_DECODER if args.quick else DECODER)
        task = json.loads(args.paged_child.read_text())
        paged = paged_row(case, Path(task["zoo"]), task["registered"], task["hot"], task["budget_mb"],
                          task["repeats"], task["written"])
        args.paged_child.write_text(json.dumps(paged))
        return
    with tempfile.TemporaryDirectory(prefix="paged-zoo-", dir=ROOT / "bench") as folder:
        shape = {"registered": 24, "hot": 8, "budget_mb": 16, "repeats": 3} if args.quick else {**PAGED, "repeats": 9}
        case = decoder_case(QUICK_DECODER if args.quick else DECODER)
        written = write_paged_zoo(case, Path(folder), shape["registered"])
        del case
        task = Path(folder) / "task.json"
        task.write_text(json.dumps({**shape, "zoo": folder, "written": written}))
        subprocess.run([sys.executable, __file__, "--paged-child", str(task), *(["--quick"] * args.quick)], check=True)
        paged = json.loads(task.read_text())
    result = {"shape": "quick" if args.quick else "full", "decoder_config": QUICK_DECODER if args.quick else DECODER,
              "batch": BATCH, "prompt_tokens": PROMPT, "rank": 8, "threads": THREADS, "rows": rows,
              "families": families, "peft_families": peft_families, "paged": paged,
              "wall_s": time.time() - started, **machine()}
    target = args.json or (Path(tempfile.gettempdir()) / "routing-quick.json" if args.quick
                           else ROOT / "bench" / "routing-results.json")
    target.write_text(json.dumps(result, indent=1) + "\n")
    print(f"routing scale: {len(rows)} rows, {len(families)} family rows in {result['wall_s']:.0f} s; wrote {target}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
