"""Redo the choice of the DDPM objective (docs/results/notes.md): three ddpm-unet bases on seed 0, the seed
recipe's 3,600 steps each, scored on validation samples (sample seeds 10,000+), one torch thread.

    OMP_NUM_THREADS=1 python docs/results/objectives.py ZOO     # about 100 minutes on one core

Each base is `train_base` with the candidate's model arguments (what a recipe's `model_args` passes), into a
zoo of its own beside a seed-0 judge; prints each one's validation figure only: a selection tool shows no test
figure (the card holds it, for after the choice).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from adapterhub_lite import Zoo, get_registry
from adapterhub_lite.training import TrainOptions
from adapterhub_lite.zoo.evaluation import DataOptions
from adapterhub_lite.zoo.train import train_base

CANDIDATES = {"seed-recipe": {}, "epsilon-min-snr-5": {"min_snr": 5}, "v-min-snr-5": {"prediction": "v", "min_snr": 5}}


def main() -> None:
    root = Path(sys.argv[1])
    torch.set_num_threads(1)
    registry = get_registry()
    for name, model_args in CANDIDATES.items():
        zoo = Zoo(root / name)
        data = DataOptions(None, {})
        train_base(registry, zoo, "richboynet", TrainOptions(epochs=1, batch_size=10, lr=1e-3, seed=0), data)
        entry = train_base(registry, zoo, "ddpm-unet", TrainOptions(steps=3600, batch_size=64, lr=1e-3, seed=0,
                                                                    schedule="cosine"), data, model_args)
        print(f"{name}: recognisable {entry.card['validation']['recognisable']:.2%} on validation samples",
              flush=True)


if __name__ == "__main__":
    main()
