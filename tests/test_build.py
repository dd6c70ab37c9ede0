"""`adapters zoo build`: recipes run seed by seed into the zoo, figures aggregated over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from capabilities import mnist_data, need
import torch
from click.testing import CliRunner

from adapterhub_lite import ConfigError, get_registry
from adapterhub_lite.zoo.build import load_recipes
from adapterhub_lite.cli import cli
from adapterhub_lite.zoo.loading import stack
from adapterhub_lite.zoo import Zoo

need("mnist-data", mnist_data())
ROOT = Path(__file__).resolve().parent.parent

TINY = {"profiles": {"tiny": {"seeds": [0, 1], "steps": [
    {"id": "rb", "command": "train-base", "model": "richboynet", "options": {"steps": 30, "batch_size": 16},
     "data": {"classes": [0, 1, 2]}},
    {"id": "nines", "command": "train", "model": "richboynet", "base": "rb",
     "adapter": {"rank": 1, "alpha": 1, "targets": ["linear*"]}, "options": {"steps": 10, "batch_size": 8},
     "data": {"classes": [9]}},
    {"id": "nines-half", "command": "evaluate", "refs": ["nines=0.5"]},
    {"id": "unet", "command": "train-base", "model": "ddpm-unet", "options": {"steps": 2, "batch_size": 4},
     "seeds": [0], "data": {"eval_samples": 4}},
    {"id": "inv", "command": "train", "model": "ddpm-unet", "base": "unet", "adapter": {"rank": 2},
     "options": {"steps": 2, "batch_size": 4}, "data": {"style": "inverted", "eval_samples": 4}, "seeds": [0]},
    {"id": "inv-half", "command": "evaluate", "refs": ["inv=0.5"], "sample": 4, "seeds": [0],
     "data": {"eval_samples": 4}},
]}}}


def test_build_runs_every_seed_and_aggregates(tmp_path) -> None:
    recipes = tmp_path / "recipes.json"
    recipes.write_text(json.dumps(TINY))
    zoo_dir = tmp_path / "zoo"
    result = CliRunner().invoke(cli, ["zoo", "build", "--profile", "tiny", "--recipes", str(recipes),
                                      "--zoo", str(zoo_dir)])
    assert result.exit_code == 0, result.output
    zoo = Zoo(zoo_dir)
    assert zoo.versions("richboynet", "base") == [1, 2] and zoo.versions("richboynet", "nines") == [1, 2]
    assert zoo.resolve("richboynet/nines@v2").card["base"]["ref"] == "richboynet/base@v2"
    assert zoo.versions("ddpm-unet", "inv") == [1]
    report = json.loads((zoo_dir / "results-tiny.json").read_text())
    assert report["seeds"] == [0, 1] and set(report["per_seed"]["1"]) == {"rb", "nines", "nines-half"}
    accuracies = [report["per_seed"][s]["nines"]["metrics"]["all"]["accuracy"] for s in ("0", "1")]
    summary = report["summary"]["nines"]["all.accuracy"]
    assert summary == {"mean": pytest.approx(sum(accuracies) / 2), "min": min(accuracies), "max": max(accuracies)}
    assert report["per_seed"]["0"]["nines-half"]["refs"] == ["richboynet/nines@v1=0.5"]
    assert report["per_seed"]["1"]["nines-half"]["base"] == "richboynet/base@v2"  # the exact base it measured on
    half = report["per_seed"]["0"]["inv-half"]
    assert Path(half["grid"]).is_file()
    # the metric, recomputed here from the same 4 samples: the share whose 2-pixel border averages above 0.5
    am, base = stack(get_registry(), zoo, half["refs"])
    images = get_registry().get_model(base.model).task.sample(am.model, 4, seed=0)
    inner = torch.zeros(32, 32, dtype=torch.bool)
    inner[2:-2, 2:-2] = True
    border = images[:, 0][:, ~inner].mean(dim=1)
    assert half["metrics"]["light_background"] == (border > 0.5).float().mean().item()
    assert half["metrics"]["samples"] == 4
    assert sum(half["metrics"]["class_histogram"]) == 4  # judged by the zoo's richboynet classifier
    assert "seed 1 nines-half: accuracy" in result.output


def test_bad_recipes_are_refused(tmp_path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"profiles": {"p": {"steps": [{"id": "a", "command": "train", "base": "b"}]}}}))
    with pytest.raises(ConfigError, match="refers to 'b' before it is built"):
        load_recipes(path)
    path.write_text(json.dumps({"profiles": {"p": {"steps": [{"id": "a", "command": "fly"}]}}}))
    with pytest.raises(ConfigError, match="other than train-base, train, evaluate"):
        load_recipes(path)
    result = CliRunner().invoke(cli, ["zoo", "build", "--zoo", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "no recipe file at" in result.stderr


def test_repository_recipes_are_valid() -> None:
    recipes = load_recipes(ROOT / "zoo" / "recipes.json")
    assert {"quick", "full"} <= set(recipes["profiles"])


SEARCH = {"profiles": {"search": {"seeds": [0, 1], "steps": [
    {"id": "rb", "command": "train-base", "model": "richboynet", "options": {"steps": 30, "batch_size": 16}},
    {"id": "slow", "command": "train", "model": "richboynet", "base": "rb", "adapter": {"rank": 1, "alpha": 1},
     "options": {"steps": 5, "batch_size": 8, "lr": 1e-6}, "data": {"classes": [9]},
     "search": {"group": "nines", "on": "val.trained_classes.accuracy"}},
    {"id": "fast", "command": "train", "model": "richboynet", "base": "rb", "adapter": {"rank": 1, "alpha": 1},
     "options": {"steps": 5, "batch_size": 8, "lr": 1e-2}, "data": {"classes": [9]},
     "search": {"group": "nines", "on": "val.trained_classes.accuracy"}},
]}}}


def test_search_candidates_never_see_test_and_the_best_mean_validation_score_wins(tmp_path) -> None:
    recipes = tmp_path / "recipes.json"
    recipes.write_text(json.dumps(SEARCH))
    zoo_dir = tmp_path / "zoo"
    result = CliRunner().invoke(cli, ["zoo", "build", "--profile", "search", "--recipes", str(recipes),
                                      "--zoo", str(zoo_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads((zoo_dir / "results-search.json").read_text())
    scores = {c: sum(report["per_seed"][s][c]["validation"]["trained_classes"]["accuracy"] for s in ("0", "1")) / 2
              for c in ("slow", "fast")}
    choice = report["selected"]["nines"]
    assert choice["scores"] == pytest.approx(scores) and choice["best"] == max(scores, key=scores.get)
    assert choice["recipe"]["options"]["lr"] == {"slow": 1e-6, "fast": 1e-2}[choice["best"]]
    for seed in ("0", "1"):
        for candidate in ("slow", "fast"):
            assert report["per_seed"][seed][candidate]["metrics"] == {}  # no test metrics measured at all
    card = Zoo(zoo_dir).resolve("richboynet/fast").card
    assert card["metrics"] == {} and card["validation"]["trained_classes"]["total"] > 0
    # the winner alone is measured on test, once, from its own zoo entries (one per seed)
    assert set(choice["test"]) == {"0", "1"}
    for seed, measured in choice["test"].items():
        assert measured["ref"] == report["per_seed"][seed][choice["best"]]["ref"]
        assert measured["metrics"]["trained_classes"]["total"] == 1009  # the test split's nines
    tests = [m["metrics"]["all"]["accuracy"] for m in choice["test"].values()]
    assert choice["test_summary"]["all.accuracy"]["mean"] == pytest.approx(sum(tests) / 2)
    assert f"nines: chose {choice['best']} on val.trained_classes.accuracy" in result.output


def test_a_search_run_as_parts_side_by_side_chooses_and_tests_as_one_build_would(tmp_path) -> None:
    """Seeds 0 and 1 as --part runs into zoos of their own (no choice, no test figure), then --select-from: the
    same scores, choice and test figures as the one build over both seeds."""
    recipes = tmp_path / "recipes.json"
    recipes.write_text(json.dumps(SEARCH))
    runner = CliRunner()
    whole = runner.invoke(cli, ["zoo", "build", "--profile", "search", "--recipes", str(recipes),
                                "--zoo", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    for seed in (0, 1):
        part = runner.invoke(cli, ["zoo", "build", "--profile", "search", "--recipes", str(recipes), "--seeds",
                                   str(seed), "--part", "--zoo", str(tmp_path / f"z{seed}")])
        assert part.exit_code == 0, part.output
        report = json.loads((tmp_path / f"z{seed}" / "results-search.json").read_text())
        assert report["part"] is True and report["selected"] == {} and "on test" not in part.output
        assert all(report["per_seed"][str(seed)][c]["metrics"] == {} for c in ("slow", "fast"))  # no test
    early = runner.invoke(cli, ["zoo", "build", "--profile", "search", "--recipes", str(recipes), "--select-from",
                                str(tmp_path / "whole"), "--zoo", str(tmp_path / "out")])
    assert early.exit_code == 1 and "is not a part" in early.output
    chosen = runner.invoke(cli, ["zoo", "build", "--profile", "search", "--recipes", str(recipes), "--select-from",
                                 str(tmp_path / "z0"), "--select-from", str(tmp_path / "z1"), "--zoo",
                                 str(tmp_path / "out")])
    assert chosen.exit_code == 0, chosen.output
    one = json.loads((tmp_path / "whole" / "results-search.json").read_text())["selected"]["nines"]
    two = json.loads((tmp_path / "out" / "results-search.json").read_text())["selected"]["nines"]
    assert two["best"] == one["best"] and two["scores"] == pytest.approx(one["scores"])
    assert {s: m["metrics"] for s, m in two["test"].items()} == {s: m["metrics"] for s, m in one["test"].items()}


def test_a_search_group_needs_one_metric(tmp_path) -> None:
    bad = json.loads(json.dumps(SEARCH))
    bad["profiles"]["search"]["steps"][2]["search"]["on"] = "val.all.accuracy"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="compares on two metrics"):
        load_recipes(path)


def test_a_step_whose_adapter_name_breaks_the_rule_is_refused_before_training(tmp_path) -> None:
    bad = json.loads(json.dumps(SEARCH))
    bad["profiles"]["search"]["steps"][1]["id"] = "lr0.001"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="step 'lr0.001': invalid adapter name 'lr0.001'"):
        load_recipes(path)


def _part(seeds: list[int], accuracies: list[float], seconds: float) -> dict:
    per_seed = {str(s): {"rb": {"metrics": {"accuracy": a}, "seconds": 1.0}} for s, a in zip(seeds, accuracies)}
    return {"profile": "p", "seeds": seeds, "seconds": seconds, "summary": {"rb": {}}, "selected": {},
            "per_seed": per_seed}


def test_results_run_seed_by_seed_combine_into_one_report() -> None:
    from adapterhub_lite.zoo.build import combine_reports

    combined = combine_reports([_part([2], [0.5], 10.0), _part([0, 1], [0.9, 0.7], 20.0)])
    assert combined["seeds"] == [0, 1, 2] and list(combined["per_seed"]) == ["0", "1", "2"]
    assert combined["summary"]["rb"]["test.accuracy"] == {"mean": pytest.approx(0.7), "min": 0.5, "max": 0.9}
    assert combined["seconds"] == 30.0 and [p["seeds"] for p in combined["parts"]] == [[2], [0, 1]]
    with pytest.raises(ConfigError, match="seed 0 is in more than one"):
        combine_reports([_part([0], [0.5], 1.0), _part([0], [0.6], 1.0)])
    chose = {**_part([1], [0.5], 1.0), "selected": {"g": {"best": "rb"}}}
    with pytest.raises(ConfigError, match="selects recipes"):
        combine_reports([_part([0], [0.5], 1.0), chose])


def test_a_search_requirement_picks_the_best_candidate_that_meets_it() -> None:
    """Best validation accuracy overall among the candidates whose digit-9 accuracy reaches the bar; none
    reaching it: the best of all, marked as not meeting it."""
    from adapterhub_lite.zoo.build import _select

    search = {"group": "g", "on": "val.all.accuracy", "require": {"val.trained_classes.accuracy": {"min": 0.98}}}
    steps = [{"id": c, "command": "train", "model": "m", "search": search} for c in ("a", "b", "c")]

    def summary(**values):
        return {c: {"val.all.accuracy": {"mean": acc}, "val.trained_classes.accuracy": {"mean": nines}}
                for c, (acc, nines) in values.items()}

    choice = _select(steps, summary(a=(0.97, 0.97), b=(0.96, 0.985), c=(0.95, 0.99)))["g"]
    assert choice["best"] == "b" and choice["meeting"] == ["b", "c"] and choice["require_met"] is True
    assert choice["constrained"]["a"] == {"val.trained_classes.accuracy": 0.97}
    choice = _select(steps, summary(a=(0.97, 0.97), b=(0.96, 0.975), c=(0.95, 0.96)))["g"]
    assert choice["best"] == "a" and choice["require_met"] is False


def test_a_search_requirement_must_be_bounds(tmp_path) -> None:
    bad = json.loads(json.dumps(SEARCH))
    bad["profiles"]["search"]["steps"][1]["search"]["require"] = {"val.all.accuracy": 0.9}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="search require must map a metric"):
        load_recipes(path)


def test_a_profile_builds_on_what_the_zoo_already_holds(tmp_path) -> None:
    """A step's base may be a zoo entry (MODEL/NAME) rather than an earlier step: a profile that adds a dial
    adapter to the bases an earlier build left. A bare name that is no step is still refused up front."""
    zoo_dir = tmp_path / "zoo"
    result = CliRunner().invoke(cli, ["train-base", "ddpm-unet", "--steps", "2", "--batch-size", "4",
                                      "--eval-samples", "4", "--zoo", str(zoo_dir)])
    assert result.exit_code == 0, result.output
    more = {"profiles": {"more": {"seeds": [0], "steps": [
        {"id": "dialed", "command": "train", "model": "ddpm-unet", "base": "ddpm-unet/base", "adapter": {"rank": 2},
         "options": {"steps": 2, "batch_size": 4, "dial": True}, "data": {"style": "inverted", "eval_samples": 4}},
        {"id": "dialed-quarter", "command": "evaluate", "refs": ["dialed=0.25"], "data": {"eval_samples": 4}},
    ]}}}
    recipes = tmp_path / "recipes.json"
    recipes.write_text(json.dumps(more))
    result = CliRunner().invoke(cli, ["zoo", "build", "--profile", "more", "--recipes", str(recipes),
                                      "--zoo", str(zoo_dir)])
    assert result.exit_code == 0, result.output
    card = Zoo(zoo_dir).resolve("ddpm-unet/dialed").card
    assert card["base"]["ref"] == "ddpm-unet/base@v1" and card["recipe"]["dial"] is True
    report = json.loads((zoo_dir / "results-more.json").read_text())
    assert report["per_seed"]["0"]["dialed-quarter"]["refs"] == ["ddpm-unet/dialed@v1=0.25"]
    more["profiles"]["more"]["steps"][0]["base"] = "ddpm-unet-base"
    recipes.write_text(json.dumps(more))
    with pytest.raises(ConfigError, match="refers to 'ddpm-unet-base' before it is built .* as MODEL/NAME"):
        load_recipes(recipes)
