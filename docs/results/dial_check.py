"""Score a style adapter of a DDPM zoo at w = 0, 0.25, 0.5, 0.75, 1, as the dial's checks do (docs/results/notes.md).

    python docs/results/dial_check.py ZOO SEED NAME                   # weight space: ddpm-unet/NAME=w
    python docs/results/dial_check.py ZOO SEED NAME --output-space    # the baseline: a share w of samples styled

Weight space turns the adapter's weight to w. Output space is the baseline a dial is compared against: each
sample runs the adapter at weight 1 with probability w, else the bare base (per-sample routing over the whole
DDIM chain, the same noise; one seeded draw, so the styled samples at w are among those at any larger w).
256 samples per weight, 25 DDIM steps, judged by the zoo's RichBoyNet, on validation noise only (sample seed
10,000 + SEED): this is a selection tool, and a selection tool prints no test figure (the test figures of a chosen
variant come from its build profile). Prints one JSON line per weight, then the recognisability kept
(against w = 0) and the largest class share. Two threads, about 30 s per weight.
"""

from __future__ import annotations

import argparse
import json

import torch

from adapterhub_lite import Zoo, get_registry
from adapterhub_lite.zoo.loading import load_base, stack
from adapterhub_lite_mnist.tasks import GenerateTask, sample_metrics

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
SAMPLES, STEPS = GenerateTask.EVAL_SAMPLES, GenerateTask.EVAL_STEPS  # as a build's evaluate step samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo")
    parser.add_argument("seed", type=int)
    parser.add_argument("name", help="a ddpm-unet adapter of the zoo (its latest version)")
    parser.add_argument("--output-space", action="store_true", help="mix the base's and the adapter's samples")
    args = parser.parse_args()
    torch.set_num_threads(2)
    registry, zoo, task = get_registry(), Zoo(args.zoo), GenerateTask()
    judge = load_base(registry, zoo.resolve("richboynet"))
    sample_seed = args.seed + GenerateTask.VAL_SEED_OFFSET
    share_draw = torch.rand(SAMPLES, generator=torch.Generator().manual_seed(12345)).tolist()
    adapted, _ = stack(registry, zoo, [f"ddpm-unet/{args.name}=1"])  # loaded once; weight or route per row
    rows = []
    for weight in WEIGHTS:
        if args.output_space:
            route = [args.name if draw < weight else None for draw in share_draw]
            with torch.no_grad(), adapted.routing(route):
                images = task.sample(adapted.model, SAMPLES, seed=sample_seed, steps=STEPS)
        else:
            adapted.set_weight(args.name, weight)
            images = task.sample(adapted.model, SAMPLES, seed=sample_seed, steps=STEPS)
        metrics = sample_metrics(images, judge)
        rows.append(metrics)
        print(json.dumps({"w": weight, "split": "val", "light_background": metrics["light_background"],
                          "border_brightness": round(metrics["border_brightness"], 3),
                          "recognisable": metrics["recognisable"], "max_class_share": metrics["max_class_share"]}),
              flush=True)
    base = rows[0]["recognisable"]
    print(json.dumps({"kept": [round(row["recognisable"] / base, 3) for row in rows],
                      "largest_class_share": max(row["max_class_share"] for row in rows)}))


if __name__ == "__main__":
    main()
