"""docs/results.md from the committed results of `adapters zoo build` (docs/results/<profile>.json).

    python docs/results/render.py                      # render the page from the committed JSON
    python docs/results/render.py --from-zoo ZOO       # first copy ZOO/results-*.json (and grids) here
    python docs/results/render.py --from-zoo Z0 Z1 Z2  # a profile run seed by seed into several zoos: combined
    python docs/results/render.py --build ZOO          # first run every profile into ZOO (hours), then copy

Every figure on the page is read from those files; the prose between the tables holds no number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROFILES = ("richboynet", "mnist-cnn", "mnist-cnn-grid", "ddpm-unet", "ddpm-v", "ddpm-fast", "ddpm-dial",
            "ddpm-fast32", "ddpm-recount", "families")
DIAL_WEIGHTS = ("0", "0.25", "0.5", "0.75", "1")
SEEDS = (0, 1, 2)
# Each seed into its own zoo; ddpm-dial trains on the latest ddpm-unet base of its zoo (ddpm-fast's, in this order:
# ddpm-fast32 came after the dial, so it builds after it); ddpm-recount judges the latest base again (ddpm-fast32's)
PER_SEED_ZOO = ("ddpm-unet", "ddpm-v", "ddpm-fast", "ddpm-dial", "ddpm-fast32", "ddpm-recount")
IMAGES = ROOT / "docs" / "img"


# --- reading ---------------------------------------------------------------------------------------------------
def load(profile: str) -> dict[str, Any] | None:
    path = HERE / f"{profile}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def runs(result: dict[str, Any], step: str) -> list[dict[str, Any]]:
    return [result["per_seed"][str(s)][step] for s in result["seeds"] if step in result["per_seed"][str(s)]]


def scope(metrics: dict[str, Any], name: str = "all") -> dict[str, Any]:
    """An adapter's metrics under a scope; a base's metrics as they are."""
    return metrics.get(name, metrics) if name in metrics or "accuracy" not in metrics else metrics


def pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def mean(values: list[float]) -> float:
    return statistics.fmean(values)


def row(label: str, values: list[str], summary: str = "", verdict: str = "") -> str:
    return f"| {label} | " + " | ".join(values) + f" | {summary} | {verdict} |"


def verdict(ok: bool, text: str) -> str:
    return f"{text}: {'met' if ok else '**missed**'}"


def header(seeds: list[int]) -> list[str]:
    return ["| | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | target |",
            "|---|" + "---|" * len(seeds) + "---|---|"]


def errors(metrics: dict[str, Any], digit: int) -> int:
    return int(metrics["per_class"][str(digit)]["errors"])


# --- sections --------------------------------------------------------------------------------------------------
def richboynet(result: dict[str, Any]) -> list[str]:
    seeds = result["seeds"]
    base = [r["metrics"] for r in runs(result, "richboynet-base")]
    d9 = [scope(r["metrics"]) for r in runs(result, "digit9")]
    keep = [scope(r["metrics"]) for r in runs(result, "digit9-keep")]
    bare = [r["metrics"] for r in runs(result, "richboynet-bare-after")]
    acc = [m["accuracy"] for m in base]
    out = ["## 1. RichBoyNet and the digit-9 adapter", "",
           "The seed notebook's commands (S = the seed) and our second recipe, `digit9-keep` (rank 2, every batch "
           "5 nines plus 5 other digits, 400 steps); profile `richboynet`. These recipes are the notebook's and an "
           "earlier session's, not chosen on the validation split here.", "",
           "```bash",
           "adapters train-base richboynet --epochs 1 --batch-size 10 --seed S",
           "adapters train richboynet digit9 --rank 1 --alpha 1 --targets 'linear*' --classes 9 --steps 100 "
           "--batch-size 10 --seed S",
           "adapters train richboynet digit9-keep --rank 2 --alpha 2 --targets 'linear*' --classes 9 --replay 5 "
           "--steps 400 --batch-size 5 --seed S",
           "```", "",
           "Test accuracy (10,000 images) and errors on digit 9 (1,009 images); the last rows are the recipe "
           "chosen on the validation split from the digit-9 search below:", "", *header(seeds)]
    out.append(row("base accuracy", [pct(a) for a in acc], f"**{pct(mean(acc))}**", verdict(mean(acc) >= 0.95,
                                                                                           ">= 95% mean")))
    out.append(row("base: digit-9 errors", [str(errors(m, 9)) for m in base], f"{mean([errors(m, 9) for m in base]):.1f}"))
    worst = [max(m["per_class"].items(), key=lambda kv: kv[1]["errors"]) for m in base]
    out.append(row("base: worst digit (errors)", [f"{d} ({v['errors']})" for d, v in worst]))
    e9 = [errors(m, 9) for m in d9]
    out.append(row("digit9: digit-9 errors", [str(e) for e in e9], f"**{mean(e9):.1f}**", verdict(mean(e9) <= 14,
                                                                                                  "<= 14 mean")))
    out.append(row("digit9: overall accuracy", [pct(m["accuracy"]) for m in d9], pct(mean([m["accuracy"] for m in d9]))))
    change = [100 * (m["accuracy"] - b["accuracy"]) for m, b in zip(d9, base)]
    out.append(row("digit9: change vs base (points)", [f"{c:+.2f}" for c in change], f"{mean(change):+.2f}"))
    k9 = [errors(m, 9) for m in keep]
    out.append(row("digit9-keep: digit-9 errors", [str(e) for e in k9], f"**{mean(k9):.1f}**",
                   verdict(mean(k9) <= 20, "<= 20 mean")))
    kchange = [100 * (m["accuracy"] - b["accuracy"]) for m, b in zip(keep, base)]
    out.append(row("digit9-keep: overall accuracy", [pct(m["accuracy"]) for m in keep],
                   pct(mean([m["accuracy"] for m in keep]))))
    out.append(row("digit9-keep: change vs base (points)", [f"{c:+.2f}" for c in kchange], f"{mean(kchange):+.2f}",
                   verdict(all(c >= -0.3 for c in kchange), "within 0.3 points on every seed")))
    same = [b["per_class"] == m["per_class"] for b, m in zip(base, bare)]
    out.append(row("bare base unchanged after adapters exist", ["yes" if s else "**no**" for s in same], "",
                   "per-digit results identical" if all(same) else "**differ**"))
    out += digit9_fix(result, base)
    params = runs(result, "digit9")[0]
    keep_params = runs(result, "digit9-keep")[0]
    base_seconds = [r["training_seconds"] for r in runs(result, "richboynet-base")]
    out += ["", f"- digit9 adds {params['parameters']:,} parameters ({params['trainable_percent']:.3f}% of the "
                f"base); digit9-keep {keep_params['parameters']:,} ({keep_params['trainable_percent']:.3f}%).",
            f"- Training: a base epoch took {min(base_seconds):.0f}-{max(base_seconds):.0f} s, an adapter "
            f"{max(r['training_seconds'] for r in runs(result, 'digit9')):.1f} s at most "
            f"({threads_note(result)}).", ""]
    return out


def digit9_fix(result: dict[str, Any], base: list[dict[str, Any]]) -> list[str]:
    """The digit-9 recipe chosen on validation (issue: <= 14 errors mean AND within 0.3 points of the base on every
    seed, <= 0.5% parameters, <= 1,000 steps): its test rows, then the search table."""
    choice = result.get("selected", {}).get("digit9-fix")
    if not choice:
        return []
    seeds = result["seeds"]
    test = [choice["test"][str(s)]["metrics"]["all"] for s in seeds if str(s) in choice["test"]]
    chosen = runs(result, choice["best"])[0]
    recipe = recipe_step("richboynet", choice["best"])
    e9 = [errors(m, 9) for m in test]
    change = [100 * (m["accuracy"] - b["accuracy"]) for m, b in zip(test, base)]
    label = f"**chosen on validation** `{choice['best']}`"
    out = [row(f"{label}: digit-9 errors", [str(e) for e in e9], f"**{mean(e9):.1f}**",
               verdict(mean(e9) <= 14, "<= 14 mean")),
           row(f"{label}: overall accuracy", [pct(m["accuracy"]) for m in test], pct(mean([m["accuracy"] for m in test]))),
           row(f"{label}: change vs base (points)", [f"{c:+.2f}" for c in change], f"{mean(change):+.2f}",
               verdict(all(c >= -0.3 for c in change), "within 0.3 points on every seed")),
           row(f"{label}: trainable parameters, steps", [f"{chosen['trainable_percent']:.3f}%, "
                                                          f"{recipe['options']['steps']}"] * len(seeds), "",
               verdict(chosen["trainable_percent"] <= 0.5 and recipe["options"]["steps"] <= 1000,
                       "<= 0.5%, <= 1,000 steps"))]
    bar = choice["require"]["val.trained_classes.accuracy"]["min"]
    out += ["", f"The digit-9 search (group `digit9-fix`, every candidate rank r on `linear*` with alpha = r, a cosine "
                f"schedule, each batch B nines plus P replayed other digits): the candidate with the best mean "
                f"validation accuracy overall (`{choice['on']}`) among those whose mean validation accuracy on the "
                f"494 validation nines reaches {pct(bar)} (the rate of 14 errors in 1,009); only it was measured "
                f"on test. {len(choice['meeting'])} of {len(choice['scores'])} candidates reach the bar.", "",
            "| candidate | rank | B + P | steps | learning rate | validation overall | validation nines | "
            "reaches the bar | chosen |", "|---|---|---|---|---|---|---|---|---|"]
    for candidate, score in sorted(choice["scores"].items(), key=lambda kv: -kv[1]):
        st = recipe_step("richboynet", candidate)
        opt = st["options"]
        nines = choice["constrained"][candidate]["val.trained_classes.accuracy"]
        out.append(f"| `{candidate}` | {st['adapter']['rank']} | {opt['batch_size']} + {opt['replay']} | "
                   f"{opt['steps']} | {opt['lr']:g} | {pct(score)} | {pct(nines)} | "
                   f"{'yes' if candidate in choice['meeting'] else ''} | "
                   f"{'**yes**' if candidate == choice['best'] else ''} |")
    return out + [""]


def search_header(title: str, seeds: list[int], choice: dict[str, Any], order: str, columns: list[str]) -> list[str]:
    """The sentence and table head above a search group's candidates."""
    return [f"{title}: mean validation accuracy over seeds {', '.join(map(str, seeds))} (`{choice['on']}`){order}; "
            "only the chosen one was measured on test.", "",
            "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def chosen_row(result: dict[str, Any], label: str, choice: dict[str, Any], accs: list[float], judged: str) -> str:
    """A search group's choice: its name, trainable share, test accuracy per seed and mean, and the verdict."""
    chosen = runs(result, choice["best"])[0]
    share = f", {chosen['trainable_percent']:.2f}% trainable" if chosen.get("trainable_percent") else ""
    return row(f"**{label}**: `{choice['best']}`{share}", [pct(a) for a in accs], f"**{pct(mean(accs))}**", judged)


def cnn(result: dict[str, Any]) -> list[str]:
    seeds = result["seeds"]
    base = [r["metrics"] for r in runs(result, "mnist-cnn-base")]
    ft = [r["metrics"] for r in runs(result, "mnist-cnn-finetune")]
    out = ["## 2. MNIST CNN: from digits 0-4 to 5-9 on noisy images", "",
           "Profile `mnist-cnn`. The base trains 3 epochs on noisy digits 0-4; everything after it learns 5-9 and "
           "is tested on the noisy 5-9 test images (one fixed noise draw). The notebook's rows use its recipes "
           "(3 epochs); the last two rows are recipes **chosen on the validation split** (5,000 held-out "
           "training images) from the same search for LoRA and for full fine-tuning, then measured on test once. "
           "**The LoRA recipe's history:** it went from 5 to 10 epochs after a miss on test (ddd655a), and the "
           "validation search below was then built around it (it sits at the grid's corner) and chose it with a "
           "validation score below the target; section 2a is the grid fixed before looking, not centred on it "
           "(issue 29).",
           "", *header(seeds)]
    acc = [m["accuracy"] for m in base]
    out.append(row("base on noisy 0-4", [pct(a) for a in acc], pct(mean(acc)),
                   verdict(min(acc) >= 0.96, ">= 96% on every seed")))
    out.append(row("full fine-tune, notebook (3 epochs)", [pct(m["accuracy"]) for m in ft],
                   pct(mean([m["accuracy"] for m in ft]))))
    for step, label in (("lora-linear", "LoRA r4 on Linear, notebook"),
                        ("lora-linear-conv", "LoRA r4 on Linear + Conv, notebook")):
        found = runs(result, step)
        if found:
            accs = [scope(r["metrics"], "trained_classes")["accuracy"] for r in found]
            out.append(row(f"{label} ({found[0]['trainable_percent']:.2f}% trainable)", [pct(a) for a in accs],
                           pct(mean(accs))))
    selected = result.get("selected", {})
    for group, label, metric_scope, target in (("cnn-lora", "LoRA, chosen on validation", "trained_classes", 0.945),
                                                ("cnn-finetune", "full fine-tune, chosen on validation", None, None)):
        choice = selected.get(group)
        if not choice:
            continue
        test = [choice["test"][str(s)]["metrics"] for s in seeds if str(s) in choice["test"]]
        accs = [(m[metric_scope] if metric_scope else m)["accuracy"] for m in test]
        out.append(chosen_row(result, label, choice, accs,
                              verdict(mean(accs) >= target, f">= {100 * target:.1f}%") if target else ""))
    out.append("")
    for group, what in (("cnn-lora", "LoRA (r4, alpha 8, on every conv and Linear, cosine schedule)"),
                        ("cnn-finetune", "full fine-tuning (every weight, cosine schedule)")):
        choice = selected.get(group)
        if not choice:
            continue
        out += search_header(f"Search for {what}", seeds, choice, "",
                             ["candidate", "learning rate", "epochs", "validation accuracy", "training s (mean)",
                              "chosen"])
        for candidate, score in choice["scores"].items():
            found = runs(result, candidate)
            options = found[0] and recipe_step("mnist-cnn", candidate)["options"]
            seconds = mean([r["training_seconds"] for r in found])
            out.append(f"| `{candidate}` | {options['lr']:g} | {options['epochs']} | {pct(score)} | {seconds:.0f} | "
                       f"{'**yes**' if candidate == choice['best'] else ''} |")
        out.append("")
    out += [f"Times are at {threads_note(result)}.", ""]
    return out


def cnn_grid(result: dict[str, Any]) -> list[str]:
    """Issue 29's clean CNN selection: the grid as the recipe file holds it, the choice per group on the mean
    validation accuracy over all seeds, the choice's test figures judged per seed."""
    seeds = result["seeds"]
    steps = recipe_steps("mnist-cnn-grid")
    lora = [s for s in steps if s.get("search", {}).get("group") == "cnn-lora-grid"]
    tune = [s for s in steps if s.get("search", {}).get("group") == "cnn-finetune-grid"]

    def values(found: list[dict[str, Any]], read: Any) -> str:
        found_values = {read(s) for s in found}
        numeric = all(isinstance(v, (int, float)) for v in found_values)
        return " or ".join(f"{v:g}" if numeric else str(v) for v in sorted(found_values, key=None if numeric else str))

    where = values(lora, lambda s: " + ".join(s["adapter"]["targets"]))
    out = ["## 2a. MNIST CNN: a grid fixed before looking", "",
           f"Profile `mnist-cnn-grid`: the base of section 2 (same recipe, its own run), then {len(lora)} LoRA "
           f"candidates (targets {where}; rank {values(lora, lambda s: s['adapter']['rank'])} with alpha twice the "
           f"rank; learning rate {values(lora, lambda s: s['options']['lr'])}; "
           f"{values(lora, lambda s: s['options']['epochs'])} epochs) and {len(tune)} full fine-tuning candidates "
           f"(learning rate {values(tune, lambda s: s['options']['lr'])}; "
           f"{values(tune, lambda s: s['options']['epochs'])} epochs), all with a cosine schedule. The grid was "
           "committed (49d6c4b) before any of it ran and does not contain section 2's recipe; each group is chosen "
           "on the mean validation accuracy over all seeds, and only the choice is measured on test, once per seed. "
           "Seeds ran side by side, one process each (`--part`), and `--select-from` chose over all of them.",
           "", *header(seeds)]
    base = [r["metrics"]["accuracy"] for r in runs(result, "mnist-cnn-base")]
    out.append(row("base on noisy 0-4", [pct(a) for a in base], pct(mean(base)),
                   verdict(min(base) >= 0.96, ">= 96% on every seed")))
    selected = result.get("selected", {})
    chosen_test: dict[str, list[float]] = {}
    for group, label, metric_scope, target in (
            ("cnn-lora-grid", "LoRA, chosen on validation", "trained_classes", 0.945),
            ("cnn-finetune-grid", "full fine-tune, chosen on validation", None, None)):
        choice = selected.get(group)
        if not choice:
            out.append(row(f"{label}: (not selected yet)", ["" for _ in seeds]))
            continue
        test = [choice["test"][str(s)]["metrics"] for s in seeds if str(s) in choice["test"]]
        accs = chosen_test[group] = [(m[metric_scope] if metric_scope else m)["accuracy"] for m in test]
        out.append(chosen_row(result, label, choice, accs,
                              verdict(min(accs) >= target, f">= {100 * target:.1f}% on every seed") if target else ""))
    if len(chosen_test) == 2:
        gap = [a - b for a, b in zip(chosen_test["cnn-lora-grid"], chosen_test["cnn-finetune-grid"])]
        out.append(row("LoRA minus full fine-tune (points)", [f"{100 * g:+.2f}" for g in gap],
                       f"{100 * mean(gap):+.2f}"))
    out.append("")
    for group, found, label in (("cnn-lora-grid", lora, "LoRA"), ("cnn-finetune-grid", tune, "full fine-tuning")):
        choice = selected.get(group)
        if choice:
            out += [grid_edges(label, found, choice), ""]
    for group, found in (("cnn-lora-grid", lora), ("cnn-finetune-grid", tune)):
        choice = selected.get(group)
        if not choice:
            continue
        out += search_header(f"Search `{group}`", seeds, choice, ", best first",
                             ["candidate", "targets", "rank", "learning rate", "epochs", "validation accuracy",
                              "training s (mean)", "chosen"])
        for candidate, score in sorted(choice["scores"].items(), key=lambda kv: -kv[1]):
            step = next(s for s in found if s["id"] == candidate)
            adapter = step.get("adapter", {})
            seconds = mean([r["training_seconds"] for r in runs(result, candidate)])
            out.append(f"| `{candidate}` | {' + '.join(adapter.get('targets', ['every weight']))} | "
                       f"{adapter.get('rank', '')} | {step['options']['lr']:g} | {step['options']['epochs']} | "
                       f"{pct(score)} | {seconds:.0f} | {'**yes**' if candidate == choice['best'] else ''} |")
        out.append("")
    out += [f"Times are at {threads_note(result)}.", ""]
    return out


def grid_edges(label: str, steps: list[dict[str, Any]], choice: dict[str, Any]) -> str:
    """Where the chosen candidate sits in its grid: a choice at the largest or smallest value tried on an axis
    says a better recipe may lie beyond the grid on that axis."""
    axes = {"rank": lambda s: s.get("adapter", {}).get("rank"), "learning rate": lambda s: s["options"]["lr"],
            "epochs": lambda s: s["options"]["epochs"]}
    chosen = next(s for s in steps if s["id"] == choice["best"])
    edges = []
    for axis, read in axes.items():
        tried = sorted({read(s) for s in steps if read(s) is not None})
        if len(tried) > 1 and read(chosen) in (tried[0], tried[-1]):
            edges.append(f"{axis} ({'the largest' if read(chosen) == tried[-1] else 'the smallest'} tried, "
                         f"{read(chosen):g})")
    where = ("at the grid's edge in " + ", ".join(edges) + ": a better recipe may lie beyond the grid there"
             if edges else "inside the grid on every axis")
    return (f"{label[0].upper()}{label[1:]}: `{choice['best']}` was chosen with a mean validation score of "
            f"{pct(choice['scores'][choice['best']])}; it sits {where}.")


def ddpm(result: dict[str, Any]) -> list[str]:
    seeds = result["seeds"]
    base = [r["metrics"] for r in runs(result, "ddpm-unet-base")]
    out = ["## 3. DDPM UNet and the inverted-style adapter", "",
           "Profile `ddpm-unet`: the judge (RichBoyNet, seed S), the UNet base (3,600 steps, batch 64, cosine), "
           "the inverted-style LoRA (r8 on attention and residual convs, 900 steps), then samples at adapter "
           "weight 0, 0.5 and 1. Metrics on 256 DDIM samples (25 steps): light background (the 2-pixel border "
           "averages above 0.5); recognisable (the judge gives >= 0.9 confidence, light samples re-inverted "
           "first); the largest class share (a histogram check: a judge fooled by textures calls most of them "
           "one digit).", "", *header(seeds)]
    trained = runs(result, "inverted")
    for weight in ("0", "0.5", "1"):
        found = [r["metrics"] for r in runs(result, f"inverted-w{weight}")]
        if not found:
            continue
        light = [m["light_background"] for m in found]
        target = {"0": verdict(max(light) <= 0.05, "<= 5% on every seed"),
                  "1": verdict(min(light) >= 0.9, ">= 90% on every seed")}.get(weight, "")
        out.append(row(f"w={weight}: light background", [pct(v) for v in light], pct(mean(light)), target))
        rec = [m.get("recognisable", 0.0) for m in found]
        out.append(row(f"w={weight}: recognisable", [pct(v) for v in rec], pct(mean(rec))))
        share = [m.get("max_class_share", 0.0) for m in found]
        out.append(row(f"w={weight}: largest class share", [pct(v) for v in share], pct(mean(share)),
                       verdict(max(share) <= 0.3, "<= 30% on every seed")))
    w0 = [r["metrics"].get("recognisable", 0.0) for r in runs(result, "inverted-w0")]
    w1 = [r["metrics"].get("recognisable", 0.0) for r in runs(result, "inverted-w1")]
    if w0 and w1:
        kept = [b1 / b0 if b0 else 0.0 for b0, b1 in zip(w0, w1)]
        out.append(row("w=1 recognisable / w=0's", [pct(k) for k in kept], pct(mean(kept)),
                       verdict(min(kept) >= 0.7, ">= 70% on every seed")))
    base_seconds = [r["training_seconds"] for r in runs(result, "ddpm-unet-base")]
    out += ["", f"- The UNet: {runs(result, 'ddpm-unet-base')[0]['parameters']:,} parameters; base training "
                f"{min(base_seconds) / 60:.1f}-{max(base_seconds) / 60:.1f} minutes; the adapter "
                f"{trained[0]['parameters']:,} parameters ({trained[0]['trainable_percent']:.1f}% of the base), "
                f"{min(r['training_seconds'] for r in trained) / 60:.1f}-"
                f"{max(r['training_seconds'] for r in trained) / 60:.1f} minutes ({threads_note(result)}).",
            f"- Base recognisability alone: {', '.join(pct(m.get('recognisable', 0.0)) for m in base)} "
            "(seeds in order).", ""]
    grids = [f"![seed {s}, w={w}](img/results-{s}-w{w}.png)" for s in seeds for w in ("0", "0.5", "1")
             if (IMAGES / f"results-{s}-w{w}.png").is_file()]
    if grids:
        out += ["Grids (64 samples, the same noise across weights): rows are seeds, columns w = 0, 0.5, 1.", "",
                "| w = 0 | w = 0.5 | w = 1 |", "|---|---|---|"]
        for s in seeds:
            cells = [f"![seed {s}, w={w}](img/results-{s}-w{w}.png)" for w in ("0", "0.5", "1")]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return out


def ddpm_v(result: dict[str, Any]) -> list[str]:
    step = recipe_step("ddpm-v", "ddpm-unet-base")
    return ddpm_base(result, "## 3a. A DDPM base that draws", [
        f"Profile `ddpm-v`: the judge as in section 3, then the UNet base with the seed recipe's "
        f"{step['options']['steps']:,} steps, batch {step['options']['batch_size']} and cosine schedule, but "
        f"predicting v (`model_args` {json.dumps(step['model_args'])}: v-prediction, Min-SNR-5 loss weighting). "
        "Chosen on validation samples (seed 0, sample seeds 10,000+) among the seed recipe, epsilon with "
        "Min-SNR-5, and v with Min-SNR-5 (notes below)."])


def ddpm_fast(result: dict[str, Any]) -> list[str]:
    step = recipe_step("ddpm-fast", "ddpm-unet-base")
    return ddpm_base(result, "## 3a'. A DDPM base that draws within 30 minutes on a slower CPU", [
        f"Profile `ddpm-fast`: the judge as in section 3, then a UNet base shaped for the CPU: narrow at full "
        f"resolution with a fourth level (`model_args` {json.dumps(step['model_args'])}), the v-prediction and "
        f"Min-SNR-5 of `ddpm-v`, {step['options']['steps']:,} steps, batch {step['options']['batch_size']}, cosine "
        f"schedule, samples from an exponential moving average of the weights (`ema` {step['options']['ema']}). "
        "Sized to the build time of the slower machine it ran on (sources above; its speed in the notes below), "
        "then tried once, on seed 1 (where `ddpm-v` and `ddpm-v-long` missed), on "
        "validation samples, before every seed ran (notes below)."])


def ddpm_fast32(result: dict[str, Any]) -> list[str]:
    step = recipe_step("ddpm-fast32", "ddpm-unet-base")
    again = load("ddpm-recount")
    more = recount(result, again)
    turned = ""
    if again and 2 in again["seeds"] and "base-1024" in again["per_seed"]["2"]:
        seed2 = again["per_seed"]["2"]["base-1024"]["metrics"]
        turned = f" (seed 2: {pct(seed2['recognisable'])} of {seed2['samples']:,} against the 50% target)"
    return ddpm_base(result, "## 3a''. The same base at batch 32, with more steps", [
        f"Profile `ddpm-fast32`: `ddpm-fast` with batch {step['options']['batch_size']} and "
        f"{step['options']['steps']:,} steps instead (seven eighths of the images seen, more updates, a similar "
        "training time on the same machine). Tried once, on seed 2 (where `ddpm-fast` missed), on validation samples, "
        "before seeds 0 and 1 ran; the dial of section 3b was not re-run on these bases (notes below)."],
        more, ["The rows that name their sample count: the same bases judged again on more samples, by profile "
               "`ddpm-recount` run in this profile's zoos; its shares move less from draw to draw. **How it came "
               "about:** the recount was added after the 256-sample rows missed on seed 2's test samples by under "
               f"a point, and it turns that verdict{turned}, so it is a test-shaped choice. "
               + recount_draws(again)] if more else [])


def recount_draws(again: dict[str, Any] | None) -> str:
    """Whether the recount's samples are a draw independent of the card's, from the sample seeds it recorded."""
    drawn = [r["metrics"].get("sample_seed") for r in runs(again, "base-1024")] if again else []
    if drawn and all(isinstance(s, int) and s >= 20_000 for s in drawn):
        return (f"Its samples come from sample seeds {', '.join(f'{s:,}' for s in drawn)} (`--sample-seed-offset "
                "20000`), apart from the card's (seeds 0+) and validation's (10,000+): an independent draw.")
    return ("Its noise is seeded by each seed while the first rows' is seeded by seed 0, so for seed 0 both draws "
            "start from sample seed 0 and are not independent (this recount ran before `--sample-seed-offset`, "
            "which the recipe now sets to 20000; not re-run since: it needs the `ddpm-fast32` bases rebuilt).")


def recount(result: dict[str, Any], again: dict[str, Any] | None) -> list[str]:
    """Rows for the same bases judged again on more test samples (profile `ddpm-recount`, run in the zoos the
    base's profile built): one run's share of 256 samples moves by about 3 points, of 1,024 by about 1.6."""
    if not again:
        return []
    seeds = result["seeds"]
    built = runs(result, "ddpm-unet-base")
    judged = runs(again, "base-1024")
    if again["seeds"] != seeds or [r.get("base") for r in judged] != [r["ref"] for r in built]:
        return [row("(ddpm-recount judged other bases than these: not shown)", ["" for _ in seeds])]
    prints = [(r.get("fingerprint"), j.get("base_fingerprint")) for r, j in zip(built, judged)]
    if all(a and b for a, b in prints) and any(a != b for a, b in prints):
        return [row("(ddpm-recount judged bases with other fingerprints than these: not shown)", ["" for _ in seeds])]
    checked = "the same fingerprints" if all(a and b for a, b in prints) else \
        "matched by version name only (results written before builds recorded fingerprints)"
    metrics = [r["metrics"] for r in judged]
    n = f"{metrics[0]['samples']:,}"
    return [row(f"bases judged again: {checked}", ["" for _ in seeds]),
            *judged_rows(metrics, f", {n} test samples", f", of {n}")]


def judged_rows(metrics: list[dict[str, Any]], samples: str = "", rarest: str = "") -> list[str]:
    """The judge's verdicts on each seed's DDPM samples (issue 16's targets), labels ending in `samples` and
    `rarest`."""
    rec = [m.get("recognisable", 0.0) for m in metrics]
    share = [m.get("max_class_share", 0.0) for m in metrics]
    fewest = [min(m.get("class_histogram", [0])) for m in metrics]
    return [row(f"recognisable{samples}", [pct(v) for v in rec], pct(mean(rec)),
                verdict(min(rec) >= 0.5, ">= 50% on every seed")),
            row(f"largest class share{samples}", [pct(v) for v in share], pct(mean(share)),
                verdict(max(share) <= 0.2, "<= 20% on every seed")),
            row(f"samples of the rarest digit{rarest}", [str(v) for v in fewest], "",
                verdict(min(fewest) > 0, "every digit drawn on every seed"))]


def ddpm_base(result: dict[str, Any], title: str, intro: list[str], more: list[str] = (),
              more_intro: list[str] = ()) -> list[str]:
    """A DDPM base profile's table: the judge's verdicts on its samples (and `more` rows, which `more_intro`
    introduces) and its build minutes."""
    seeds = result["seeds"]
    base = runs(result, "ddpm-unet-base")
    out = [title, "", " ".join([*intro, "256 DDIM samples (25 steps) judged on test.", *more_intro]), "",
           *header(seeds)]
    out += judged_rows([r["metrics"] for r in base])
    out += more
    val = [r["validation"].get("recognisable", 0.0) for r in base if r.get("validation")]
    if len(val) == len(seeds):
        out.append(row("recognisable on validation samples", [pct(v) for v in val], pct(mean(val))))
    parts = result.get("parts") or [{"seeds": seeds, "seconds": result["seconds"]}]
    built = {s: p["seconds"] for p in parts for s in p["seeds"]} if all(len(p["seeds"]) == 1 for p in parts) else {}
    if built:
        minutes = [built[s] / 60 for s in seeds]
        out.append(row("build minutes (judge, base, its evaluation)", [f"{m:.1f}" for m in minutes],
                       f"{mean(minutes):.1f}", verdict(max(minutes) <= 30, "<= 30 on 2 cores, every seed")))
    trained = ", ".join(f"{r['training_seconds'] / 60:.1f}" for r in base)
    out += ["", f"- Base training alone: {trained} minutes (seeds in order; {threads_note(result)}).", ""]
    return out


def dial(result: dict[str, Any]) -> list[str]:
    seeds = result["seeds"]
    trained = runs(result, "inverted-dial")
    recipe = recipe_step("ddpm-dial", "inverted-dial")
    out = ["## 3b. A style dial: the inverted style at w = 0 ... 1", "",
           "Profile `ddpm-dial`, run on the zoos the `ddpm-fast` profile built (each seed's base of section 3a'): an "
           f"inverted-style LoRA (rank {recipe['adapter']['rank']}, {recipe['options']['steps']:,} steps) trained "
           "with `--dial`: each batch runs the adapter at a random weight w in [0, 1] against images that keep "
           "the style with probability w. Then samples at w = 0, 0.25, 0.5, 0.75, 1 (w = 0 is the base itself). "
           "Metrics as in section 3; border brightness is the mean border pixel (0 black, 1 white).", "",
           *header(seeds)]
    found = {w: [r["metrics"] for r in runs(result, f"dial-w{w}")] for w in DIAL_WEIGHTS}
    if any(len(v) != len(seeds) for v in found.values()):
        return out[:-2] + ["(Incomplete results: not every weight was measured on every seed.)", ""]
    border = {w: [m["border_brightness"] for m in found[w]] for w in DIAL_WEIGHTS}
    base_rec = [m.get("recognisable", 0.0) for m in found["0"]]
    for w in DIAL_WEIGHTS:
        out.append(row(f"w={w}: border brightness", [f"{v:.3f}" for v in border[w]], f"{mean(border[w]):.3f}"))
        light = [m["light_background"] for m in found[w]]
        out.append(row(f"w={w}: light background", [pct(v) for v in light], pct(mean(light)),
                       verdict(min(light) >= 0.9, ">= 90% on every seed") if w == "1" else ""))
        rec = [m.get("recognisable", 0.0) for m in found[w]]
        out.append(row(f"w={w}: recognisable", [pct(v) for v in rec], pct(mean(rec))))
        kept = [r / b if b else 0.0 for r, b in zip(rec, base_rec)]
        if w != "0":  # at w = 0 the adapter is off: the base's own share, 100% of itself by construction
            out.append(row(f"w={w}: recognisable / the base's", [pct(k) for k in kept], pct(mean(kept)),
                           verdict(min(kept) >= 0.6, ">= 60% on every seed")))
        share = [m.get("max_class_share", 0.0) for m in found[w]]
        out.append(row(f"w={w}: largest class share", [pct(v) for v in share], pct(mean(share)),
                       verdict(max(share) <= 0.3, "<= 30% on every seed")))
    rising = [all(border[a][i] < border[b][i] for a, b in zip(DIAL_WEIGHTS, DIAL_WEIGHTS[1:]))
              for i in range(len(seeds))]
    out.append(row("border brightness rises with w", ["yes" if r else "no" for r in rising], "",
                   verdict(all(rising), "monotone on every seed")))
    out += ["", f"- The adapter: {trained[0]['parameters']:,} parameters ({trained[0]['trainable_percent']:.1f}% of "
                f"the base), {min(r['training_seconds'] for r in trained) / 60:.1f}-"
                f"{max(r['training_seconds'] for r in trained) / 60:.1f} minutes of training "
                f"({threads_note(result)}).", ""]
    if all((IMAGES / f"results-dial-{s}-w{w}.png").is_file() for s in seeds for w in DIAL_WEIGHTS):
        out += ["Grids (64 samples, the same noise in every column): rows are seeds, columns w = 0, 0.25, 0.5, "
                "0.75, 1.", "", "| " + " | ".join(f"w = {w}" for w in DIAL_WEIGHTS) + " |",
                "|" + "---|" * len(DIAL_WEIGHTS)]
        for s in seeds:
            out.append("| " + " | ".join(f"![seed {s}, w={w}](img/results-dial-{s}-w{w}.png)"
                                         for w in DIAL_WEIGHTS) + " |")
        out.append("")
    return out


# --- the page --------------------------------------------------------------------------------------------------
def families(result: dict[str, Any]) -> list[str]:
    seeds = result["seeds"]
    names = [s["id"].removeprefix("digit9-") for s in recipe_steps("families") if s["id"].startswith("digit9-")]
    base = [r["metrics"] for r in runs(result, "richboynet-base")]
    out = ["## 4. Other families: DoRA, LoHa, LoKr, (IA)^3", "",
           "Profile `families`: each family on the digit-9 recipe of section 1 (same steps, batch, learning rate and "
           "seeds; rank chosen so the parameter counts are comparable) and on the CNN 5-9 transfer of section 2 "
           "(the notebook's 3-epoch recipe, every conv and Linear adapted). LoRA is re-run in the same profile, so "
           "every row of a seed shares that seed's base. On digit 9 every family runs at LoRA's settings, untuned.",
           "",
           "Digit-9 errors on the test set (1,009 nines) per seed, then means:", "",
           "| family | rank | parameters | " + " | ".join(f"seed {s}" for s in seeds)
           + " | mean digit-9 errors | overall accuracy | change vs base (points) | training s |",
           "|---|---|---|" + "---|" * len(seeds) + "---|---|---|---|"]
    steps = {s["id"]: s for s in recipe_steps("families")}
    for family in names:
        found = runs(result, f"digit9-{family}")
        if not found:
            continue
        metrics = [scope(r["metrics"]) for r in found]
        e9 = [errors(m, 9) for m in metrics]
        change = [100 * (m["accuracy"] - b["accuracy"]) for m, b in zip(metrics, base)]
        rank = steps[f"digit9-{family}"]["adapter"].get("rank", "-")
        out.append(f"| {family} | {rank} | {found[0]['parameters']:,} | " + " | ".join(map(str, e9))
                   + f" | **{mean(e9):.1f}** | {pct(mean([m['accuracy'] for m in metrics]))} | {mean(change):+.2f} | "
                   f"{mean([r['training_seconds'] for r in found]):.2f} |")
    selected = result.get("selected", {})
    groups = list(dict.fromkeys(s["search"]["group"] for s in recipe_steps("families")
                                if s["id"].startswith("cnn-") and "search" in s))
    candidates = {g: [s for s in recipe_steps("families") if s.get("search", {}).get("group") == g] for g in groups}
    rates = sorted({s["options"]["lr"] for g in groups for s in candidates[g]}, reverse=True)
    out += ["", "CNN: each family at two learning rates (LoRA's 1e-3 and a lower one), the one with the higher mean "
            "validation accuracy on 5-9 chosen, then measured on the noisy 5-9 test images once (per seed, then "
            "means; overall: all ten digits; training seconds of the chosen recipe):", "",
            "| family | rank | parameters | " + " | ".join(f"validation 5-9, lr {lr:g}" for lr in rates)
            + " | chosen | " + " | ".join(f"test seed {s}" for s in seeds)
            + " | mean 5-9 accuracy | overall accuracy | training s |",
            "|---|---|---|" + "---|" * len(rates) + "---|" + "---|" * len(seeds) + "---|---|---|"]
    for group in groups:
        choice = selected.get(group)
        if not choice:
            continue
        by_lr = {c["options"]["lr"]: c["id"] for c in candidates[group]}
        chosen = next(c for c in candidates[group] if c["id"] == choice["best"])
        test = [choice["test"][str(s)]["metrics"] for s in seeds if str(s) in choice["test"]]
        accs = [scope(m, "trained_classes")["accuracy"] for m in test]
        found = runs(result, choice["best"])
        vals = [pct(choice["scores"][by_lr[lr]]) if lr in by_lr else "-" for lr in rates]
        out.append(f"| {group.removeprefix('cnn-')} | {chosen['adapter'].get('rank', '-')} | "
                   f"{found[0]['parameters']:,} | " + " | ".join(vals) + f" | lr {chosen['options']['lr']:g} | "
                   + " | ".join(pct(a) for a in accs) + f" | **{pct(mean(accs))}** | "
                   f"{pct(mean([scope(m)['accuracy'] for m in test]))} | "
                   f"{mean([r['training_seconds'] for r in found]):.0f} |")
    out += ["", f"Times are at {threads_note(result)}.", ""]
    return out


def recipe_steps(profile: str) -> list[dict[str, Any]]:
    recipes = json.loads((ROOT / "zoo" / "recipes.json").read_text())
    return recipes["profiles"][profile]["steps"]


def recipe_step(profile: str, step_id: str) -> dict[str, Any]:
    return next(step for step in recipe_steps(profile) if step["id"] == step_id)


def threads_note(result: dict[str, Any]) -> str:
    threads = _sources().get(result["profile"], {}).get("threads")
    if not threads:
        return "the recorded threads"
    return "1 torch thread, one core" if threads == 1 else f"{threads} torch threads on {threads} cores"


def _sources() -> dict[str, Any]:
    """How each profile's results were made: the command, the commit of the code, the thread count."""
    path = HERE / "sources.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def render() -> str:
    sources = _sources()
    out = ["# Results: the seed experiments, reproduced", "",
           "Generated by `python docs/results/render.py` from the committed results in "
           "[docs/results/](results/): every figure in the tables is read from those files, which "
           "`adapters zoo build --profile P` wrote ([zoo/recipes.json](../zoo/recipes.json) holds the profiles); "
           "the notes at the end also quote runs no committed file holds, and each of their entries says which of "
           "its figures are reproduced (*Source:*) and which are not (*Not reproduced:*, with why); no verdict in "
           "a table rests on those. "
           "To regenerate everything (hours on 2 cores): `python docs/results/render.py --build ZOO`.", ""]
    for profile in PROFILES:
        made = sources.get(profile)
        if made:
            out.append(f"- `{profile}`: `{made['command']}` at commit {made['commit']}, {threads_note({'profile': profile})}"
                       f", {made['seconds'] / 60:.0f} minutes"
                       + (f" ({made['note']})" if made.get("note") else ""))
    out += ["", "Training is seeded and reproducible: the same command gives the same weights bit for bit at the same "
            "thread count (cards record `training.threads`); another thread count rounds differently and moves "
            "figures within their spread over seeds. Recipes that were searched were chosen on the validation "
            "split (5,000 training images held out, fixed seed) and measured on test once.", ""]
    for profile, section in (("richboynet", richboynet), ("mnist-cnn", cnn), ("mnist-cnn-grid", cnn_grid),
                             ("ddpm-unet", ddpm),
                             ("ddpm-v", ddpm_v), ("ddpm-fast", ddpm_fast), ("ddpm-fast32", ddpm_fast32),
                             ("ddpm-dial", dial), ("families", families)):
        result = load(profile)
        out += section(result) if result else [f"(No committed results for `{profile}` yet.)", ""]
    notes = HERE / "notes.md"
    if notes.is_file():
        out += [notes.read_text().rstrip(), ""]
    return "\n".join(out)


def copy_from_zoo(zoos: list[Path]) -> None:
    """Each profile's results (combined over the zoos when it ran seed by seed into several) and the grids."""
    from adapterhub_lite.zoo.build import combine_reports

    for profile in PROFILES:
        found = [json.loads(p.read_text()) for zoo in zoos if (p := zoo / f"results-{profile}.json").is_file()]
        if found:
            report = found[0] if len(found) == 1 else combine_reports(found)
            (HERE / f"{profile}.json").write_text(json.dumps(report, indent=2) + "\n")
    for zoo in zoos:
        for prefix, name in (("inverted-w", "results-{seed}-w{weight}.png"),
                             ("dial-w", "results-dial-{seed}-w{weight}.png")):
            for grid in sorted((zoo / "grids").glob(f"{prefix}*-seed*.png")):
                weight, seed = grid.stem.removeprefix(prefix).split("-seed")
                shutil.copyfile(grid, IMAGES / name.format(seed=seed, weight=weight))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-zoo", type=Path, nargs="+",
                        help="copy results-*.json and grids from this zoo (or these zoos, combined) first")
    parser.add_argument("--build", type=Path, metavar="ZOO", help="run every profile into ZOO first (hours)")
    args = parser.parse_args()
    if args.build:
        zoos = [args.build]
        for profile in PROFILES:
            if profile in PER_SEED_ZOO:  # each seed into its own zoo, where 'ddpm-unet/base' is that seed's
                for seed in SEEDS:
                    zoo = args.build / f"ddpm-s{seed}"
                    subprocess.run(["adapters", "zoo", "build", "--profile", profile, "--seeds", str(seed),
                                    "--zoo", str(zoo)], check=True, env={**os.environ})
                    zoos += [zoo] if zoo not in zoos else []
            else:
                subprocess.run(["adapters", "zoo", "build", "--profile", profile, "--zoo", str(args.build)],
                               check=True, env={**os.environ})
        args.from_zoo = zoos
    if args.from_zoo:
        copy_from_zoo(args.from_zoo)
    (ROOT / "docs" / "results.md").write_text(render() + "\n")
    print(f"wrote {ROOT / 'docs' / 'results.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
