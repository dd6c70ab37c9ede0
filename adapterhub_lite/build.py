"""`adapters zoo build`: run a recipe file's experiments into the zoo and summarise them.

A recipe file (JSON, e.g. zoo/recipes.json) has named profiles; each profile
lists seeds and steps. A step trains a base (`train-base`, optionally `from`
another step's base), trains an adapter (`train`, on a step's base), or
measures a stack of adapters (`evaluate`, optionally writing a `sample` grid).
Every step runs once per seed (a step's own "seeds" can narrow that); the results (per seed, and mean/min/max over
seeds) go to `<zoo>/results-<profile>.json`.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .atomic import make_dirs_under, publish, write_text
from .config import LoraConfig
from .errors import AdapterhubError, ConfigError
from .registry import Registry
from .training import TrainOptions
from .workflow import DataOptions, evaluate, metric_scopes, stack, train_adapter, train_base
from .zoo import Zoo

COMMANDS = ("train-base", "train", "evaluate")


def load_recipes(path: Path) -> dict[str, Any]:
    try:
        recipes = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterhubError(f"no recipe file at {path}: pass --recipes FILE (the repository has zoo/recipes.json)")\
            from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    for name, profile in recipes.get("profiles", {}).items():
        ids = set()
        for step in profile.get("steps", []):
            if step.get("command") not in COMMANDS or "id" not in step:
                raise ConfigError(f"{path}: profile {name!r} has a step without an id or with a command "
                                  f"other than {', '.join(COMMANDS)}: {step}")
            for ref in (step.get("base"), step.get("from")):
                if ref and ref not in ids:
                    raise ConfigError(f"{path}: step {step['id']!r} refers to {ref!r} before it is built")
            ids.add(step["id"])
    return recipes


def _data(step: dict[str, Any], data_dir: Path | None) -> DataOptions:
    data = step.get("data", {})
    classes = tuple(data["classes"]) if data.get("classes") is not None else None
    return DataOptions(data_dir, classes, data.get("style"), step.get("eval_samples", 256))


def _ref(built: dict[str, str], text: str) -> str:
    """A step's ref may name an earlier step's id: 'digit9=0.5' -> 'richboynet/digit9@v3=0.5'."""
    head, eq, weight = text.partition("=")
    return built.get(head, head) + (eq + weight if eq else "")


def run_profile(registry: Registry, zoo: Zoo, recipes: dict[str, Any], profile: str, data_dir: Path | None,
                seeds: list[int] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    profiles = recipes.get("profiles", {})
    if profile not in profiles:
        from .errors import UnknownNameError

        raise UnknownNameError("profile", profile, profiles)
    spec = profiles[profile]
    seeds = seeds if seeds is not None else spec.get("seeds", [0])
    per_seed: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for seed in seeds:
        built: dict[str, str] = {}
        results: dict[str, Any] = {}
        for step in spec["steps"]:
            if seed not in step.get("seeds", seeds):
                continue
            t0 = time.perf_counter()
            result = _run_step(registry, zoo, step, seed, built, data_dir)
            result["seconds"] = round(time.perf_counter() - t0, 1)
            results[step["id"]] = result
            log(f"seed {seed} {step['id']}: {_headline(result)} ({result['seconds']}s)")
        per_seed[str(seed)] = results
    summary = {step["id"]: _aggregate([per_seed[str(s)][step["id"]] for s in seeds if step["id"] in per_seed[str(s)]])
               for step in spec["steps"]}
    report = {"profile": profile, "seeds": seeds, "seconds": round(time.perf_counter() - started, 1),
              "summary": summary, "per_seed": per_seed}
    out = write_text(zoo.root / f"results-{profile}.json", json.dumps(report, indent=2) + "\n")
    log(f"wrote {out} ({report['seconds']}s)")
    return report


def _run_step(registry: Registry, zoo: Zoo, step: dict[str, Any], seed: int, built: dict[str, str],
              data_dir: Path | None) -> dict[str, Any]:
    options = TrainOptions(**{**step.get("options", {}), "seed": seed, "progress": sys.stderr.isatty()})
    data = _data(step, data_dir)
    if step["command"] == "train-base":
        start = built[step["from"]] if step.get("from") else None
        entry = train_base(registry, zoo, step["model"], options, data, step.get("model_args"), start=start)
    elif step["command"] == "train":
        adapter = dict(step.get("adapter", {}))
        adapter.setdefault("targets", list(registry.get_model(step["model"]).default_targets))
        entry = train_adapter(registry, zoo, step["model"], step.get("name", step["id"]), LoraConfig(**adapter),
                              options, data, base=built[step["base"]])
    else:
        return _evaluate_step(registry, zoo, step, seed, built, data_dir)
    assert entry is not None  # a build runs in one process
    built[step["id"]] = entry.ref
    card = entry.card
    return {"ref": entry.ref, "metrics": card["metrics"], "training_seconds": card["training"]["seconds"],
            "trainable_percent": card.get("trainable_percent"), "parameters": card["parameters"]}


def _evaluate_step(registry: Registry, zoo: Zoo, step: dict[str, Any], seed: int, built: dict[str, str],
                   data_dir: Path | None) -> dict[str, Any]:
    refs = [_ref(built, r) for r in step["refs"]]
    am, base = stack(registry, zoo, refs)
    result: dict[str, Any] = {"refs": refs}
    if step.get("sample"):
        task = registry.get_model(base.model).task
        images = task.sample(am.model, step["sample"], seed=seed)
        from torchvision.utils import save_image

        folder, _ = make_dirs_under(zoo.root, "grids")
        out = publish(folder / f"{step['id']}-seed{seed}.png", lambda target: save_image(
            images, str(target), nrow=int(round(step["sample"] ** 0.5)), padding=1))
        result["grid"] = str(out)
    result["metrics"] = evaluate(registry, zoo, base.model, am.model, _data(step, data_dir), seed=seed)
    return result


def _headline(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    parts = []
    for scope, values in metric_scopes(metrics, single=""):
        for key in ("accuracy", "light_background", "recognisable"):
            if key in values:
                parts.append(f"{scope + ' ' if scope else ''}{key} {values[key]:.4f}")
    return ", ".join(parts)


def _aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, min and max over seeds of every scalar figure (and of per-digit errors)."""
    columns: dict[str, list[float]] = {}
    for result in results:
        for key, value in _scalars(result).items():
            columns.setdefault(key, []).append(value)
    return {k: {"mean": statistics.fmean(v), "min": min(v), "max": max(v)} for k, v in columns.items()}


def _scalars(result: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    metrics = result["metrics"]
    for scope, values in metric_scopes(metrics):
        for key in ("accuracy", "light_background", "recognisable", "max_class_share"):
            if key in values:
                out[f"{scope}.{key}"] = float(values[key])
        for digit, counts in values.get("per_class", {}).items():
            out[f"{scope}.errors.{digit}"] = float(counts["errors"])
    for key in ("training_seconds", "trainable_percent", "seconds"):
        if result.get(key) is not None:
            out[key] = float(result[key])
    return out
