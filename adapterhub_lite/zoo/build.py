"""`adapters zoo build`: run a recipe file's experiments into the zoo and summarise them.

A recipe file (JSON, e.g. zoo/recipes.json) has named profiles; each profile
lists seeds and steps. A step trains a base (`train-base`, optionally `from`
another step's base), trains an adapter (`train`, on a step's base), or
measures a stack of adapters (`evaluate`, optionally writing a `sample` grid).
Every step runs once per seed (a step's own "seeds" can narrow that); the results (per seed, and mean/min/max over
seeds) go to `<zoo>/results-<profile>.json`.

Recipes are chosen on the validation split, never on test: a training step with
`"search": {"group": G, "on": METRIC}` is a candidate. It is measured on the
validation split only (its card has no test metrics), and once every seed has
run, the candidate of group G with the best mean METRIC over seeds (a summary
key such as `val.trained_classes.accuracy`; `"lower": true` to minimise) is
the group's choice, written under `selected` in the results with every
candidate's score. `"require": {METRIC: {"min": X}}` (or `"max"`) adds
constraints on other validation means: the best candidate that meets them is
chosen (if none does, the best of all, recorded as not meeting them). A
reporting profile then uses the chosen recipe and measures test once.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..bounded_json import parse_json
from ..atomic import make_dirs_under, publish, write_text
from .cards import metric_scopes
from ..errors import ConfigError, NameRuleError
from ..progress import is_quiet
from ..refs import check_name
from ..registry import Registry
from ..training import TrainOptions
from .evaluation import DataOptions, evaluate, headlines, task_of, test_metrics
from .loading import stack
from .train import train_adapter, train_base
from .store import Zoo

COMMANDS = ("train-base", "train", "evaluate")


def load_recipes(path: Path) -> dict[str, Any]:
    try:
        recipes = parse_json(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no recipe file at {path}: name a recipe file (the repository has zoo/recipes.json)",
                          option="recipes") from None
    except ValueError as exc:  # malformed, not UTF-8, or past the limits of bounded_json
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    for name, profile in recipes.get("profiles", {}).items():
        ids = set()
        metric_of_group: dict[str, str] = {}
        for step in profile.get("steps", []):
            if step.get("command") not in COMMANDS or "id" not in step:
                raise ConfigError(f"{path}: profile {name!r} has a step without an id or with a command "
                                  f"other than {', '.join(COMMANDS)}: {step}")
            if step["command"] == "train":  # the adapter's zoo name: refused now, not after hours of training
                try:
                    check_name(step.get("name", step["id"]), "adapter name")
                except NameRuleError as exc:
                    raise ConfigError(f"{path}: step {step['id']!r}: {exc}") from None
            search = step.get("search")
            if search is not None:
                if (step["command"] == "evaluate" or not isinstance(search, dict)
                        or not isinstance(search.get("group"), str) or not isinstance(search.get("on"), str)):
                    raise ConfigError(f"{path}: step {step['id']!r}: search must be {{\"group\": NAME, \"on\": "
                                      "METRIC}} on a training step")
                if metric_of_group.setdefault(search["group"], search["on"]) != search["on"]:
                    raise ConfigError(f"{path}: search group {search['group']!r} compares on two metrics")
                _check_require(search.get("require", {}), f"{path}: step {step['id']!r}")
            for ref in (step.get("base"), step.get("from")):
                if ref and ref not in ids and "/" not in ref:  # 'model/base': what the zoo already holds
                    raise ConfigError(f"{path}: step {step['id']!r} refers to {ref!r} before it is built "
                                      "(name an earlier step's id, or a zoo entry as MODEL/NAME)")
            ids.add(step["id"])
    return recipes


def _check_require(require: Any, where: str) -> None:
    def is_bound(bound: Any) -> bool:
        return isinstance(bound, dict) and bool(bound) and set(bound) <= {"min", "max"} and all(
            _number(v) for v in bound.values())

    if not isinstance(require, dict) or not all(is_bound(b) for b in require.values()):
        raise ConfigError(f"{where}: search require must map a metric to {{\"min\": X}} and/or {{\"max\": X}}")


def _meets(require: dict[str, dict[str, float]], means: dict[str, Any]) -> bool:
    for metric, bound in require.items():
        value = means.get(metric, {}).get("mean")
        if value is None or value < bound.get("min", value) or value > bound.get("max", value):
            return False
    return True


def _data(step: dict[str, Any], data_dir: Path | None) -> DataOptions:
    """A step's `data` holds its task's own options, passed through untouched."""
    return DataOptions(data_dir, dict(step.get("data", {})), test="search" not in step)


def _ref(built: dict[str, str], text: str) -> str:
    """A step's ref may name an earlier step's id: 'style=0.5' -> 'mymodel/style@v3=0.5'; anything else is a
    zoo ref (a profile may build on what an earlier build left in the zoo: 'base': 'mymodel/base')."""
    head, eq, weight = text.partition("=")
    return built.get(head, head) + (eq + weight if eq else "")


def run_profile(registry: Registry, zoo: Zoo, recipes: dict[str, Any], profile: str, data_dir: Path | None,
                seeds: list[int] | None = None, log: Callable[[str], None] = print, part: bool = False) -> dict[str, Any]:
    """Run a profile's steps seed by seed into `zoo`. A `part` is one share of the seeds of a profile that
    selects recipes, run beside the others in zoos of their own: it chooses nothing and measures no candidate on
    test (`select_across` does, over every part's seeds at once)."""
    profiles = recipes.get("profiles", {})
    if profile not in profiles:
        from ..errors import UnknownNameError

        raise UnknownNameError("profile", profile, profiles)
    spec = profiles[profile]
    seeds = seeds if seeds is not None else spec.get("seeds", [0])
    per_seed: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    runs = sum(1 for seed in seeds for step in spec["steps"] if seed in step.get("seeds", seeds))
    done = 0
    for seed in seeds:
        built: dict[str, str] = {}
        results: dict[str, Any] = {}
        for step in spec["steps"]:
            if seed not in step.get("seeds", seeds):
                continue
            done += 1
            if not is_quiet():
                log(f"[{done}/{runs}] seed {seed} {step['id']}: {step['command']} ...")
            t0 = time.perf_counter()
            result = _run_step(registry, zoo, step, seed, built, data_dir)
            result["seconds"] = round(time.perf_counter() - t0, 1)
            results[step["id"]] = result
            log(f"[{done}/{runs}] seed {seed} {step['id']}: {_headline(result)} ({result['seconds']}s)")
        per_seed[str(seed)] = results
    summary = {step["id"]: _aggregate([per_seed[str(s)][step["id"]] for s in seeds if step["id"] in per_seed[str(s)]])
               for step in spec["steps"]}
    selected = {} if part else _select(spec["steps"], summary)
    for group, choice in selected.items():
        met = "" if "require_met" not in choice else (
            f"; {len(choice['meeting'])} of {len(choice['scores'])} candidates meet {', '.join(choice['require'])}"
            if choice["require_met"] else f"; no candidate meets {', '.join(choice['require'])}: best of all")
        log(f"{group}: chose {choice['best']} on {choice['on']} ({choice['scores'][choice['best']]:.4f} mean){met}")
        _test_once(registry, lambda seed: zoo, next(s for s in spec["steps"] if s["id"] == choice["best"]), choice,
                   per_seed, data_dir)
        task = task_of(registry, next(s for s in spec["steps"] if s["id"] == choice["best"])["model"])
        for seed, measured in choice["test"].items():
            log(f"{group}: {choice['best']} on test, seed {seed}: "
                f"{_headline({'headline': headlines(task, measured['metrics'])})}")
    report = {"profile": profile, "seeds": seeds, "seconds": round(time.perf_counter() - started, 1),
              "summary": summary, "selected": selected, "per_seed": per_seed, **({"part": True} if part else {})}
    out = write_text(zoo.root / f"results-{profile}.json", json.dumps(report, indent=2) + "\n")
    log(f"wrote {out} ({report['seconds']}s)")
    return report


def select_across(registry: Registry, parts: list[Zoo], out: Zoo, recipes: dict[str, Any], profile: str,
                  data_dir: Path | None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """A profile that selects recipes, run seed by seed as parts (`run_profile(..., part=True)`, each into a zoo
    of its own, side by side): choose each group on the mean over every part's seeds, as one build would, then
    measure only the choice on test, each seed in its own zoo. The combined report goes to `out`."""
    from ..errors import ConfigError

    reports = []
    for zoo in parts:
        path = zoo.root / f"results-{profile}.json"
        try:
            report = parse_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"no readable {path}: run `adapters zoo build --profile {profile} --seeds S --part "
                              f"--zoo {zoo.root}` first ({exc})") from None
        if not report.get("part"):
            raise ConfigError(f"{path} is not a part (it chose on its own seeds and measured test): select across "
                              "parts only")
        reports.append(report)
    combined = combine_reports(reports)
    zoo_of = {seed: zoo for zoo, report in zip(parts, reports) for seed in report["per_seed"]}
    steps = recipes["profiles"][profile]["steps"]
    selected = _select(steps, combined["summary"])
    if not selected:
        raise ConfigError(f"profile {profile!r} has no search groups: combine its parts with render.py --from-zoo")
    for group, choice in selected.items():
        step = next(s for s in steps if s["id"] == choice["best"])
        log(f"{group}: chose {choice['best']} on {choice['on']} ({choice['scores'][choice['best']]:.4f} mean over "
            f"seeds {', '.join(map(str, combined['seeds']))})")
        _test_once(registry, zoo_of.__getitem__, step, choice, combined["per_seed"], data_dir)
        task = task_of(registry, step["model"])
        for seed, measured in choice["test"].items():
            log(f"{group}: {choice['best']} on test, seed {seed}: "
                f"{_headline({'headline': headlines(task, measured['metrics'])})}")
    combined["selected"] = selected
    combined["zoos"] = {seed: str(zoo.root) for seed, zoo in zoo_of.items()}
    written = write_text(out.root / f"results-{profile}.json", json.dumps(combined, indent=2) + "\n")
    log(f"wrote {written}")
    return combined


def combine_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One profile run seed by seed in several processes (`--seeds 0`, `--seeds 1`, ... into separate zoos),
    combined into the report one run over all those seeds writes: the seeds' results side by side, the
    summary recomputed over all of them. A profile that selects recipes (search groups) chooses on the mean over
    all its seeds, so its parts cannot be combined afterwards: that is refused."""
    from ..errors import ConfigError

    if not reports:
        raise ConfigError("no results to combine")
    profiles = {r.get("profile") for r in reports}
    if len(profiles) != 1:
        raise ConfigError(f"results of different profiles cannot be combined: {', '.join(map(str, profiles))}")
    if any(r.get("selected") for r in reports):
        raise ConfigError("a profile that selects recipes chooses over all its seeds at once: run it in one build")
    per_seed: dict[str, dict[str, Any]] = {}
    for report in reports:
        for seed, results in report["per_seed"].items():
            if seed in per_seed:
                raise ConfigError(f"seed {seed} is in more than one of the results: each part must run other seeds")
            per_seed[seed] = results
    seeds = sorted(int(s) for s in per_seed)
    steps = list(dict.fromkeys(step for r in reports for step in r["summary"]))
    summary = {step: _aggregate([per_seed[str(s)][step] for s in seeds if step in per_seed[str(s)]])
               for step in steps}
    return {"profile": reports[0]["profile"], "seeds": seeds, "seconds": round(sum(r["seconds"] for r in reports), 1),
            "parts": [{"seeds": r["seeds"], "seconds": r["seconds"]} for r in reports],
            "summary": summary, "selected": {}, "per_seed": {str(s): per_seed[str(s)] for s in seeds}}


def _run_step(registry: Registry, zoo: Zoo, step: dict[str, Any], seed: int, built: dict[str, str],
              data_dir: Path | None) -> dict[str, Any]:
    options = TrainOptions(**{**step.get("options", {}), "seed": seed})  # progress: see progress.py
    data = _data(step, data_dir)
    if step["command"] == "train-base":
        start = _ref(built, step["from"]) if step.get("from") else None
        entry = train_base(registry, zoo, step["model"], options, data, step.get("model_args"), start=start)
    elif step["command"] == "train":
        adapter = dict(step.get("adapter", {}))
        adapter.setdefault("targets", list(registry.get_model(step["model"]).default_targets))
        family = step.get("family") or registry.default_family(step["model"])
        entry = train_adapter(registry, zoo, step["model"], step.get("name", step["id"]),
                              registry.config_class(family)(**adapter), options, data, base=_ref(built, step["base"]))
    else:
        return _evaluate_step(registry, zoo, step, seed, built, data_dir)
    assert entry is not None  # a build runs in one process
    built[step["id"]] = entry.ref
    card = entry.card
    return {"ref": entry.ref, "fingerprint": card.get("fingerprint"), "metrics": card["metrics"],
            "headline": card.get("headline", {}), "validation": card.get("validation"),
            "training_seconds": card["training"]["seconds"], "trainable_percent": card.get("trainable_percent"),
            "parameters": card["parameters"]}


def _test_once(registry: Registry, zoo_of: Callable[[str], Zoo], step: dict[str, Any], choice: dict[str, Any],
               per_seed: dict[str, dict[str, Any]], data_dir: Path | None) -> None:
    """The chosen candidate's zoo entries (one per seed, in the zoo `zoo_of(seed)`), measured on the test
    split: the only test figures a search reports."""
    data = replace(_data(step, data_dir), test=True)
    choice["test"] = {seed: {"ref": results[step["id"]]["ref"],
                             "metrics": test_metrics(registry, zoo_of(seed), zoo_of(seed).resolve(
                                 results[step["id"]]["ref"]), data)}
                      for seed, results in per_seed.items() if step["id"] in results}
    choice["test_summary"] = _aggregate([{"metrics": r["metrics"]} for r in choice["test"].values()])


def _select(steps: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """Per search group, the candidate with the best mean of its metric over seeds, and every score."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        if "search" in step:
            groups.setdefault(step["search"]["group"], []).append(step)
    selected = {}
    for group, candidates in groups.items():
        on, lower = candidates[0]["search"]["on"], bool(candidates[0]["search"].get("lower", False))
        require = candidates[0]["search"].get("require", {})
        scores = {c["id"]: summary[c["id"]][on]["mean"] for c in candidates if on in summary.get(c["id"], {})}
        if not scores:
            raise ConfigError(f"search group {group!r}: no candidate reports {on!r} (see the summary's keys)")
        meeting = [c for c in scores if _meets(require, summary[c])]
        pool = meeting or list(scores)
        best = (min if lower else max)(pool, key=scores.__getitem__)
        chosen = next(c for c in candidates if c["id"] == best)
        selected[group] = {"on": on, "lower": lower, "best": best, "scores": scores,
                           "recipe": {k: chosen[k] for k in ("model", "options", "adapter", "data") if k in chosen}}
        if require:
            selected[group].update(require=require, meeting=meeting, require_met=bool(meeting),
                                   constrained={c: {m: summary[c].get(m, {}).get("mean") for m in require}
                                                for c in scores})
    return selected


def _evaluate_step(registry: Registry, zoo: Zoo, step: dict[str, Any], seed: int, built: dict[str, str],
                   data_dir: Path | None) -> dict[str, Any]:
    refs = [_ref(built, r) for r in step["refs"]]
    am, base = stack(registry, zoo, refs)
    # the exact version (a ref 'MODEL/base' names the latest) and its fingerprint: versions are per zoo, so only
    # the fingerprint says whether two results files measured the same base
    result: dict[str, Any] = {"refs": refs, "base": base.ref, "base_fingerprint": base.card.get("fingerprint")}
    if step.get("sample"):
        task = registry.get_model(base.model).task
        images = task.sample(am.model, step["sample"], seed=seed)
        from torchvision.utils import save_image

        folder, _ = make_dirs_under(zoo.root, "grids")
        out = publish(folder / f"{step['id']}-seed{seed}.png", lambda target: save_image(
            images, str(target), nrow=int(round(step["sample"] ** 0.5)), padding=1))
        result["grid"] = str(out)
    result["metrics"] = evaluate(registry, zoo, base.model, am.model, _data(step, data_dir), seed=seed)
    result["headline"] = headlines(task_of(registry, base.model), result["metrics"])
    return result


def _headline(result: dict[str, Any]) -> str:
    """One line of a step's figures: the task's headline numbers per scope (as the zoo card stores them)."""
    parts = []
    for scope, figures in (result.get("headline") or {}).items():
        label = "" if scope in ("", "all") else f"{scope.replace('_', ' ')} "
        parts += [f"{label}{k} {v:.4f}" for k, v in figures.items() if _number(v)]
    return ", ".join(parts) or "done"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, min and max over seeds of every number in the results (metrics flattened to dotted keys)."""
    columns: dict[str, list[float]] = {}
    for result in results:
        for key, value in _scalars(result).items():
            columns.setdefault(key, []).append(value)
    return {k: {"mean": statistics.fmean(v), "min": min(v), "max": max(v)} for k, v in columns.items()}


def _scalars(result: dict[str, Any]) -> dict[str, float]:
    """Every number of a step's result as a dotted key: test metrics under their scope ("test." for a base),
    validation metrics under "val.", and the step's own figures (seconds, trainable percent)."""
    out: dict[str, float] = {}
    for prefix, metrics, single in (("", result.get("metrics") or {}, "test"),
                                    ("val.", result.get("validation") or {}, "")):
        for scope, values in metric_scopes(metrics, single=single):
            _flatten(values, prefix + (f"{scope}." if scope else ""), out)
    for key in ("training_seconds", "trainable_percent", "seconds"):
        if _number(result.get(key)):
            out[key] = float(result[key])
    return out


def _flatten(values: Any, prefix: str, out: dict[str, float]) -> None:
    for key, value in values.items() if isinstance(values, dict) else ():
        if isinstance(value, dict):
            _flatten(value, f"{prefix}{key}.", out)
        elif _number(value):
            out[f"{prefix}{key}"] = float(value)
