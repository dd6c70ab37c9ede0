"""PEFT round trip on a real zoo adapter: export ours -> load in peft; train in peft -> import into ours.

Prints the largest logit difference on the noisy 5-9 MNIST test set (fixed noise seed 0) both ways.
Usage: python bench/peft_roundtrip.py --zoo ZOO [--adapter mnist-cnn/lora-best@v1] [--data-dir DIR]
Needs peft (the bench extra) and a zoo with the MNIST CNN base and an adapter on it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from adapterhub_lite import Zoo, get_registry, load_base
from adapterhub_lite.zoo.exchange import export_refs, import_file
from adapterhub_lite.zoo.loading import stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", required=True)
    parser.add_argument("--adapter", default="mnist-cnn/lora-best@v1")
    parser.add_argument("--data-dir", default=os.environ.get("ADAPTERS_DATA"))
    args = parser.parse_args()
    import peft
    from adapterhub_lite_mnist.data import load_mnist, normalize

    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    registry, zoo = get_registry(), Zoo(args.zoo)
    adapter = zoo.resolve(args.adapter)
    base_entry = zoo.resolve(adapter.card["base"]["ref"])
    x, y = load_mnist("test", args.data_dir, (5, 6, 7, 8, 9))
    g = torch.Generator().manual_seed(0)
    a, u = torch.rand(len(x), 1, 1, 1, generator=g), torch.rand(x.shape, generator=g)
    inputs = normalize(x) * (1 - a) + u * a
    tmp = Path(tempfile.mkdtemp())

    folder, _ = export_refs(registry, zoo, [adapter.ref], "peft", tmp / "exported")
    ours, _ = stack(registry, zoo, [adapter.ref])
    theirs = peft.PeftModel.from_pretrained(load_base(registry, base_entry), str(folder)).eval()
    with torch.no_grad():
        o1, o2 = ours(inputs), theirs(inputs)
    print(f"ours -> peft: {adapter.ref}, {len(x)} images: max |logit diff| {(o1 - o2).abs().max().item():.3g} "
          f"(max |logit| {o1.abs().max().item():.4g}), predictions agree {(o1.argmax(1) == o2.argmax(1)).float().mean():.4f}")

    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2", "fc3", "fc4", "conv1", "conv2", "conv3"],
                             rank_pattern={"conv3": 2}, use_rslora=True)
    model = peft.get_peft_model(load_base(registry, base_entry), config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 2e-3)
    xt, yt = load_mnist("train", args.data_dir, (5, 6, 7, 8, 9))
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(300):
        idx = torch.randint(0, len(xt), (32,), generator=gen)
        mix = torch.rand(32, 1, 1, 1, generator=gen)
        noisy = normalize(xt[idx]) * (1 - mix) + torch.rand(32, 1, 28, 28, generator=gen) * mix
        loss = F.cross_entropy(model(noisy), yt[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(str(tmp / "trained-by-peft"), safe_serialization=True)
    with torch.no_grad():
        o2 = model(inputs)
    scratch = Zoo(tmp / "zoo")
    import shutil

    shutil.copytree(base_entry.path, scratch.root / base_entry.model / "base" / "v1")
    entry = import_file(registry, scratch, tmp / "trained-by-peft", "peft", base_entry.model, "from-peft")
    ours, _ = stack(registry, scratch, [entry.ref])
    with torch.no_grad():
        o1 = ours(inputs)
    print(f"peft -> ours: rank 4 (conv3 rank 2), rsLoRA, 300 steps: max |logit diff| {(o1 - o2).abs().max().item():.3g} "
          f"(max |logit| {o1.abs().max().item():.4g}), predictions agree {(o1.argmax(1) == o2.argmax(1)).float().mean():.4f}")


if __name__ == "__main__":
    main()
