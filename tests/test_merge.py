"""Combining adapters and fusing them into a base: exact where promised, refused where unsound.

PEFT's combiner silently produces wrong adapters for mixed ranks, rsLoRA and
DoRA; each of those cases has a test here.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_matches_reference, reference_delta, reference_model, seed_adapter, seed_base
from safetensors import safe_open
from safetensors.torch import save_file

from adapterhub_lite import ConfigError, IncompatibleAdapterError, LoraConfig, ZooError
from adapterhub_lite.zoo.compositions import compose
from adapterhub_lite.zoo.combine import plan_combine, write_combined
from adapterhub_lite.zoo.fuse import fuse
from adapterhub_lite.zoo.loading import load_base, stack
from adapterhub_lite.zoo import Zoo

X = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(7))
METHODS = ["cat", "linear", "svd", "ties", "dare-linear", "dare-ties", "magnitude-prune"]


@pytest.fixture
def zoo(tiny_registry, tmp_path) -> Zoo:
    """A base and two adapters that differ in everything PEFT trips over: rank, alpha, rsLoRA, targets, slots."""
    zoo = Zoo(tmp_path / "zoo")
    base = seed_base(tiny_registry, zoo, "tiny")
    seed_adapter(tiny_registry, zoo, base, "a", LoraConfig(targets=["conv", "depthwise", "fc*", "attn"], rank=2,
                                                           alpha=4, attention_projections="q,v"), seed=1)
    seed_adapter(tiny_registry, zoo, base, "b", LoraConfig(targets=["conv", "fc1", "attn"], rank=3, alpha=3,
                                                           rslora=True, attention_projections="k,out"), seed=2)
    return zoo


def outputs(registry, zoo, refs) -> torch.Tensor:
    am, _ = stack(registry, zoo, refs)
    with torch.no_grad():
        return am(X)


def reference(registry, zoo, refs) -> torch.Tensor:
    """The stack's output from the float64 reference model (tests/conftest.py), not from our forward."""
    am, _ = stack(registry, zoo, refs)
    with torch.no_grad():
        return reference_model(am)(X.double())


def deltas(registry, zoo, refs) -> dict[str, torch.Tensor]:
    """The weighted delta per base weight of a stack, summed, from the reference definition of a LoRA delta."""
    am, _ = stack(registry, zoo, refs)
    total: dict[str, torch.Tensor] = {}
    for module, layer in am.layers().items():
        for name, weight in layer.live():
            for path, delta in reference_delta(layer, name).items():
                key = f"{module}.{path}"
                total[key] = total.get(key, 0) + delta * weight
    return total


@pytest.mark.parametrize("method", ["cat", "linear"])
def test_exact_methods_equal_the_stack_with_mixed_ranks_alphas_and_rslora(tiny_registry, zoo, method) -> None:
    refs = ["a=0.7", "b=-1.3"]  # a negative weight subtracts
    plan = plan_combine(tiny_registry, zoo, "tiny", refs, method)
    entry = write_combined(tiny_registry, zoo, plan, "merged")
    want, got = deltas(tiny_registry, zoo, ["tiny/" + r for r in refs]), deltas(tiny_registry, zoo, [entry.ref])
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5 * want[key].abs().max().item())
    assert_matches_reference(outputs(tiny_registry, zoo, [entry.ref]),
                             reference(tiny_registry, zoo, ["tiny/" + r for r in refs]))
    card = entry.card
    assert card["parents"] == ["tiny/a@v1", "tiny/b@v1"]
    assert card["merge"]["method"] == method and card["merge"]["exact"] is True
    assert [(i["ref"], i["weight"]) for i in card["merge"]["inputs"]] == [("tiny/a@v1", 0.7), ("tiny/b@v1", -1.3)]
    ranks = plan.result.report["ranks"]
    if method == "cat":
        assert ranks["conv"] == 5 and ranks["fc2"] == 2  # the sum where both adapt
        assert ranks["attn"] == 3  # a adapts q,v at rank 2, b k,out at rank 3: no slot holds both
    assert ranks["depthwise"] == (2 if method == "cat" else 1)  # groups of one channel hold rank 1 at most


def test_linear_finds_the_smallest_exact_rank(tiny_registry, zoo) -> None:
    # the same adapter at 0.25 and 0.75 is one rank-2 adapter at weight 1
    plan = plan_combine(tiny_registry, zoo, "tiny", ["a=0.25", "a=0.75"], "linear")
    assert plan.result.report["ranks"]["fc2"] == 2 and plan.result.report["ranks"]["conv"] == 2
    # a minus itself is nothing: rank 1 of zeros, and the model is the base
    zero = write_combined(tiny_registry, zoo, plan_combine(tiny_registry, zoo, "tiny", ["a=1", "a=-1"], "linear"),
                          "zero")
    torch.testing.assert_close(outputs(tiny_registry, zoo, [zero.ref]), outputs(tiny_registry, zoo, ["tiny"]),
                               rtol=0, atol=1e-5)
    with pytest.raises(IncompatibleAdapterError, match="linear is exact and this weighted sum needs rank"):
        plan_combine(tiny_registry, zoo, "tiny", ["a", "b"], "linear", rank=1)


def test_svd_is_the_best_low_rank_approximation_and_reports_energy(tiny_registry, zoo) -> None:
    plan = plan_combine(tiny_registry, zoo, "tiny", ["a=0.7", "b=-1.3"], "svd", rank=2)
    entry = write_combined(tiny_registry, zoo, plan, "svd2")
    want, got = deltas(tiny_registry, zoo, ["tiny/a=0.7", "tiny/b=-1.3"]), deltas(tiny_registry, zoo, [entry.ref])
    kept = total = 0.0
    for key in ("fc1.weight", "conv.weight"):
        matrix = want[key].flatten(1)
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        best = (u[:, :2] * s[:2]) @ vh[:2]
        torch.testing.assert_close(got[key].flatten(1), best, rtol=1e-4, atol=1e-4 * matrix.abs().max().item())
        kept, total = kept + float((s[:2] ** 2).sum()), total + float((s**2).sum())
    assert 0 < plan.result.report["energy_kept"] < 1 and plan.result.report["exact"] is False
    assert plan.result.report["min_energy_kept"] <= kept / total
    resized = plan_combine(tiny_registry, zoo, "tiny", ["b"], "svd", rank=3)  # resizing to its own rank loses nothing
    assert resized.result.report["energy_kept"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("method", ["ties", "dare-linear", "dare-ties", "magnitude-prune"])
def test_sparsifying_methods_are_seeded_and_sound(tiny_registry, zoo, method) -> None:
    def run(**options):
        return plan_combine(tiny_registry, zoo, "tiny", ["a", "b=0.5"], method, rank=3, options=options).result.state

    first, again = run(density=0.5, **({"seed": 3} if "dare" in method else {})), \
        run(density=0.5, **({"seed": 3} if "dare" in method else {}))
    assert all(torch.equal(first[k], again[k]) for k in first)
    if "dare" in method:
        other = run(density=0.5, seed=4)
        assert any(not torch.equal(first[k], other[k]) for k in first)
    # density 1 keeps everything: magnitude-prune and dare-linear become the plain weighted sum (truncated)
    if method in ("magnitude-prune", "dare-linear"):
        full = plan_combine(tiny_registry, zoo, "tiny", ["a", "b=0.5"], method, rank=5, options={"density": 1.0})
        exact = plan_combine(tiny_registry, zoo, "tiny", ["a", "b=0.5"], "svd", rank=5)
        assert full.result.report["ranks"] == exact.result.report["ranks"]
        assert full.result.report["energy_kept"] == pytest.approx(exact.result.report["energy_kept"], rel=1e-6)
        got = deltas(tiny_registry, zoo, [write_combined(tiny_registry, zoo, full, "full").ref])
        want = deltas(tiny_registry, zoo, [write_combined(tiny_registry, zoo, exact, "exact").ref])
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5 * want[key].abs().max().item())


def test_ties_sign_election_by_hand() -> None:
    from adapterhub_lite_lora.merges import elect_and_mean, magnitude_prune, random_drop

    a = torch.tensor([[3.0, -1.0, 0.5, 0.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 2.0, -2.0, 0.0]], dtype=torch.float64)
    # signs by total mass: +, +, -, 0 -> means of the agreeing entries
    assert elect_and_mean([a, b]).tolist() == [[2.0, 2.0, -2.0, 0.0]]
    assert magnitude_prune(a, 0.5).tolist() == [[3.0, -1.0, 0.0, 0.0]]
    dropped = random_drop(torch.ones(1000, dtype=torch.float64), 0.25, torch.Generator().manual_seed(0))
    assert set(dropped.unique().tolist()) == {0.0, 4.0} and 150 < int((dropped > 0).sum()) < 350


def test_merge_refuses_what_it_cannot_do_right(tiny_registry, zoo, tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not use density") as info:
        plan_combine(tiny_registry, zoo, "tiny", ["a", "b"], "svd", options={"density": 0.3})
    assert info.value.option == "density"  # the library names its parameter; the CLI adds the flag
    with pytest.raises(ConfigError, match="sets the rank itself") as info:
        plan_combine(tiny_registry, zoo, "tiny", ["a", "b"], "cat", rank=2)
    assert info.value.option == "rank"
    # another base: refused by fingerprint
    other = seed_base(tiny_registry, zoo, "tiny", seed=5)
    seed_adapter(tiny_registry, zoo, other, "c", LoraConfig(targets=["fc1"], rank=2), seed=3)
    with pytest.raises(IncompatibleAdapterError, match="tiny/c@v1 was trained on tiny/base@v2, not tiny/base@v1"):
        plan_combine(tiny_registry, zoo, "tiny", ["a", "c"], "cat")


def _rewrite(entry_path: Path, edit) -> None:
    """Rewrite a zoo adapter file in place with edited metadata/tensors (simulating a newer writer)."""
    path = entry_path / "adapter.safetensors"
    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    header, tensors = edit(header, tensors)
    save_file(tensors, str(path), metadata=header)


def test_dora_and_unknown_fields_are_refused_not_dropped(tiny_registry, zoo) -> None:
    """A file from a newer writer with a DoRA flag and magnitude vectors: PEFT would merge it as plain LoRA."""
    def add_dora(header, tensors):
        meta = json.loads(header["adapterhub_lite"])
        meta["config"]["use_dora"] = True
        header["adapterhub_lite"] = json.dumps(meta)
        return header, tensors

    _rewrite(zoo.resolve("tiny/b").path, add_dora)
    with pytest.raises(IncompatibleAdapterError, match=r"does not understand \(config.use_dora\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan_combine(tiny_registry, zoo, "tiny", ["a", "b"], "cat")

    def add_magnitude(header, tensors):
        tensors["fc1.lora_magnitude"] = torch.ones(16)
        return header, tensors

    _rewrite(zoo.resolve("tiny/a").path, add_magnitude)
    with pytest.raises(IncompatibleAdapterError, match="'fc1.lora_magnitude' is not a LoRA factor"):
        plan_combine(tiny_registry, zoo, "tiny", ["a"], "svd")


def test_fuse_into_base_equals_the_stack(tiny_registry, zoo) -> None:
    plan, entry = fuse(tiny_registry, zoo, "tiny", ["a=0.7", "b=-1.3"], "fused")
    assert entry.ref == "tiny/fused@v1" and entry.is_base
    assert [(f["ref"], f["weight"]) for f in entry.card["fused"]] == [("tiny/a@v1", 0.7), ("tiny/b@v1", -1.3)]
    assert entry.card["parents"] == ["tiny/base@v1", "tiny/a@v1", "tiny/b@v1"]
    plain = load_base(tiny_registry, entry)  # a plain TinyNet, no adapter layers
    with torch.no_grad():
        assert_matches_reference(plain(X), reference(tiny_registry, zoo, ["tiny/a=0.7", "tiny/b=-1.3"]))
    # adapters trained on the old base do not silently apply to the fused one
    with pytest.raises(IncompatibleAdapterError, match="trained on tiny/base@v1, not tiny/fused@v1"):
        stack(tiny_registry, zoo, ["tiny/fused", "tiny/a"])
    with pytest.raises(ZooError, match="tiny/a already holds adapter versions"):
        fuse(tiny_registry, zoo, "tiny", ["a"], "a")


def test_compositions_expand_everywhere(tiny_registry, zoo) -> None:
    mix = compose(zoo, "tiny", "mix", ["a=0.5", "b=2"])
    assert mix.card["parts"] == [{"ref": "tiny/a@v1", "weight": 0.5}, {"ref": "tiny/b@v1", "weight": 2.0}]
    assert not (mix.path / "adapter.safetensors").exists()  # references only, no tensors copied
    nested = compose(zoo, "tiny", "nested", ["mix=-1"])
    torch.testing.assert_close(outputs(tiny_registry, zoo, [nested.ref]),
                               outputs(tiny_registry, zoo, ["tiny/a=-0.5", "tiny/b=-2"]))
    merged = write_combined(tiny_registry, zoo, plan_combine(tiny_registry, zoo, "tiny", ["nested"], "cat"), "flat")
    torch.testing.assert_close(outputs(tiny_registry, zoo, [merged.ref]),
                               outputs(tiny_registry, zoo, ["tiny/a=-0.5", "tiny/b=-2"]), rtol=1e-4, atol=1e-3)
    # a part that disappeared, and a composition on another base
    import shutil
    shutil.rmtree(zoo.resolve("tiny/b").path)
    with pytest.raises(ZooError, match="composition tiny/mix@v1 names tiny/b@v1, which the zoo cannot provide"):
        stack(tiny_registry, zoo, ["tiny/mix"])


def test_cli_merge_dry_run_writes_nothing_and_errors_leave_the_zoo_alone(zoo_with_adapters) -> None:
    runner, root = CliRunner(), zoo_with_adapters
    before = sorted(str(p) for p in root.rglob("*"))
    dry = runner.invoke(cli_app(), ["merge", "mnist-cnn", "a", "b=0.5", "--method", "cat", "--out", "ab",
                                    "--dry-run", "--zoo", str(root)])
    assert dry.exit_code == 0, dry.output
    assert "would write mnist-cnn/ab: cat of 1 x mnist-cnn/a@v1 (rank 2, alpha 8), 0.5 x mnist-cnn/b@v1 (rank 4, alpha 8)" in dry.output
    assert "rank 2-6; exact: yes (checked: largest deviation " in dry.output and "energy kept 1.0000" in dry.output
    assert "7 modules" in dry.output
    assert "nothing written" in dry.output
    cases = [
        (["merge", "mnist-cnn", "a", "--method", "cat", "--rank", "2", "--out", "x"], "sets the rank itself; give no "
         "rank (or use a method that takes one) (--rank)"),
        (["merge", "mnist-cnn", "a", "--method", "tie", "--out", "x"], "did you mean 'ties'"),
        (["merge", "mnist-cnn", "a", "--method", "svd", "--density", "0.2", "--out", "x"],
         "does not use density (it takes rank) (--density)"),
        (["merge", "mnist-cnn", "nope", "--out", "x"], "unknown mnist-cnn entry 'nope'"),
        (["merge", "mnist-cnn", "a", "--out", "a-base", "--into-base", "--method", "svd"], "--into-base fuses"),
        (["merge", "mnist-cnn", "a", "--out", "base"], "'base' is reserved"),
        (["compose", "mnist-cnn", "base", "a"], "'base' is reserved"),
        (["merge", "mnist-cnn", "richboynet/a", "--out", "x"], "different models"),
    ]
    for args, message in cases:
        result = runner.invoke(cli_app(), [*args, "--zoo", str(root)])
        assert result.exit_code != 0, (args, result.output)
        assert message in result.output, (args, result.output)
    assert sorted(str(p) for p in root.rglob("*")) == before
    wrote = runner.invoke(cli_app(), ["merge", "mnist-cnn", "a", "b=-0.5", "--method", "svd", "--rank", "3",
                                      "--out", "ab", "--json", "--zoo", str(root)])
    assert wrote.exit_code == 0, wrote.output
    card = json.loads(wrote.output)
    assert card["merge"]["method"] == "svd" and card["recipe"]["rank"] == 3
    assert card["parents"] == ["mnist-cnn/a@v1", "mnist-cnn/b@v1"] and 0 < card["merge"]["energy_kept"] < 1


def cli_app():
    from adapterhub_lite.cli import cli

    return cli


@pytest.fixture
def zoo_with_adapters(tmp_path) -> Path:
    """A CNN zoo (the installed plugins, as the CLI sees them) with two random adapters."""
    from adapterhub_lite import get_registry

    zoo = Zoo(tmp_path / "cnnzoo")
    base = seed_base(get_registry(), zoo, "mnist-cnn")
    seed_adapter(get_registry(), zoo, base, "a", LoraConfig(targets=["fc*", "conv*"], rank=2), seed=1)
    seed_adapter(get_registry(), zoo, base, "b", LoraConfig(targets=["fc1", "conv2"], rank=4, alpha=8), seed=2)
    return zoo.root


def test_extract_recovers_a_low_rank_fine_tune_and_reports_what_it_cannot_hold(tiny_registry) -> None:
    from adapterhub_lite_lora import extract_lora
    from conftest import TinyNet

    from adapterhub_lite import AdaptedModel

    torch.manual_seed(0)
    base, tuned = TinyNet().eval(), TinyNet().eval()
    tuned.load_state_dict(base.state_dict())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a rank-2 change on fc1 and conv, and a bias change no LoRA can hold
        tuned.fc1.weight += torch.randn(16, 2, generator=gen) @ torch.randn(2, 8, generator=gen)
        tuned.conv.weight += (torch.randn(8, 2, generator=gen) @ torch.randn(2, 27, generator=gen)).view(8, 3, 3, 3)
        tuned.fc2.bias += 0.25
    bundle, report = extract_lora(base, tuned, rank=2)
    assert sorted(bundle.configs) == ["conv", "fc1"] and report["energy_kept"] == pytest.approx(1.0)
    assert report["max_abs_change_not_held"] == pytest.approx(0.25)
    _, lossy = extract_lora(base, tuned, rank=1)
    assert 0 < lossy["energy_kept"] < 1
    am = AdaptedModel(base, registry=tiny_registry)
    am.add_bundle(bundle)
    for name in ("fc1", "conv"):
        layer = am.layers()[name]
        torch.testing.assert_close(layer.base.weight + layer.layer_of("extracted").delta_weight("extracted"),
                                   tuned.get_submodule(name).weight, rtol=1e-5, atol=1e-5)


def test_extract_turns_an_adapter_of_another_family_into_a_lora(zoo_with_adapters, tmp_path) -> None:
    """`adapters extract MODEL ADAPTER`: the adapter's fused weights are the tuned ones, so a LoHa (rank 2: its
    Hadamard product has rank <= 4) comes back as a LoRA with the same outputs at rank 4, and a lossy one at
    rank 1 says how much energy it kept; an adapter sits on its own base, so --base is refused."""
    from adapterhub_lite_lycoris.config import LohaConfig

    from adapterhub_lite import AdaptedModel, get_registry, load_base
    from adapterhub_lite.zoo.loading import stack

    registry, zoo, runner = get_registry(), Zoo(zoo_with_adapters), CliRunner()
    am = AdaptedModel(load_base(registry, zoo.resolve("mnist-cnn/base")), base_id="mnist-cnn/base@v1",
                      registry=registry)
    am.add_adapter("style", LohaConfig(targets=["fc1", "conv2"], rank=2, alpha=2))
    torch.manual_seed(3)
    with torch.no_grad():
        for _, param in am.adapter_parameters("style"):
            param.normal_(0, 0.3)
    am.save_adapter("style", tmp_path / "style.safetensors")
    zoo_flag = ["--zoo", str(zoo_with_adapters)]
    done = runner.invoke(cli_app(), ["import", str(tmp_path / "style.safetensors"), "--model", "mnist-cnn",
                                     "--name", "style", *zoo_flag])
    assert done.exit_code == 0, done.output
    exact = runner.invoke(cli_app(), ["extract", "mnist-cnn", "style", "--rank", "4", "--out", "style-lora",
                                      "--json", *zoo_flag])
    assert exact.exit_code == 0, exact.output
    card = json.loads(exact.output)
    assert card["family"] == "lora" and card["extracted"]["energy_kept"] == pytest.approx(1.0, abs=1e-6)
    assert card["parents"] == ["mnist-cnn/base@v1", "mnist-cnn/style@v1"]
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        want = stack(registry, zoo, ["mnist-cnn/style"])[0](x)
        torch.testing.assert_close(stack(registry, zoo, ["mnist-cnn/style-lora"])[0](x), want, rtol=1e-4, atol=1e-5)
    lossy = runner.invoke(cli_app(), ["extract", "mnist-cnn", "mnist-cnn/style=0.5", "--rank", "1", "--out", "half",
                                      *zoo_flag])
    assert lossy.exit_code == 0 and "energy kept 0." in lossy.output, lossy.output
    refused = runner.invoke(cli_app(), ["extract", "mnist-cnn", "style", "--rank", "4", "--out", "x", "--base",
                                        "mnist-cnn/base", *zoo_flag])
    assert refused.exit_code != 0 and "drop --base" in refused.output
    assert "x" not in zoo.names("mnist-cnn")


def test_check_base_needs_a_base_that_came_from_a_folder(zoo_with_adapters, tmp_path) -> None:
    done = CliRunner().invoke(cli_app(), ["export", "mnist-cnn/a", "--format", "peft", "--out", str(tmp_path / "p"),
                                          "--check-base", str(tmp_path), "--zoo", str(zoo_with_adapters)])
    assert done.exit_code == 1 and "not brought in from a checkpoint folder" in done.output
    assert not (tmp_path / "p").exists()


def test_library_merge_export_and_fused_state(tiny_registry, tmp_path) -> None:
    from conftest import TinyNet, randomize_adapters

    from adapterhub_lite import AdaptedModel

    torch.manual_seed(0)
    am = AdaptedModel(TinyNet().eval(), registry=tiny_registry)
    am.add_adapter("a", LoraConfig(targets=["fc*", "conv"], rank=2, alpha=4))
    am.add_adapter("b", LoraConfig(targets=["fc1", "attn"], rank=3, rslora=True))
    randomize_adapters(am.model)
    am.set_active(["a", "b"], weights=[0.5, -1.0])
    with torch.no_grad():
        want = reference_model(am)(X.double())
        assert_matches_reference(am(X), want)
    before = {k: v.clone() for k, v in am.model.state_dict().items()}
    report = am.combine({"a": 0.5, "b": -1.0}, out="ab", method="cat")
    assert report["exact"] and am.active == {"a": 0.5, "b": -1.0}  # the new adapter starts disabled
    fused = am.fused_state_dict()
    assert all(torch.equal(v, before[k]) for k, v in am.model.state_dict().items() if k in before)  # untouched
    am.set_active(["ab"])
    with torch.no_grad():
        assert_matches_reference(am(X), want)
    plain = TinyNet().eval()
    plain.load_state_dict(fused, strict=True)
    with torch.no_grad():
        assert_matches_reference(plain(X), want)


def test_energy_kept_is_pinned_on_a_hand_computed_case(tiny_registry) -> None:
    """delta = diag(3, 2, 1): keeping rank 1 keeps 3^2 / (3^2 + 2^2 + 1^2) = 9/14 of the energy (squared
    singular values), and the kept delta is diag(3, 0, 0); two ranks keep 13/14."""
    from adapterhub_lite import CombineInput

    config = LoraConfig(targets=["fc"], rank=3, alpha=3)  # scale 1
    state = {"fc.lora_A": torch.eye(3), "fc.lora_B": torch.diag(torch.tensor([3.0, 2.0, 1.0]))}
    svd = tiny_registry.get_combine_method("svd").fn
    for rank, energy in ((1, 9 / 14), (2, 13 / 14), (3, 1.0)):
        result = svd([CombineInput(label="d", weight=1.0, configs={"fc": config}, state=state)], rank=rank)
        assert result.report["energy_kept"] == pytest.approx(energy, abs=1e-9)
        assert result.report["min_energy_kept"] == pytest.approx(energy, abs=1e-9)
        kept = result.configs["fc"]
        delta = kept.scale * result.state["fc.lora_B"].double() @ result.state["fc.lora_A"].double()
        want = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64) * (torch.arange(3) < rank))
        torch.testing.assert_close(delta, want, rtol=0, atol=1e-6)
    # a weight scales the delta, never the share of energy kept
    half = svd([CombineInput(label="d", weight=0.5, configs={"fc": config}, state=state)], rank=1)
    assert half.report["energy_kept"] == pytest.approx(9 / 14, abs=1e-9)


def test_merge_methods_declare_their_own_flags_and_a_family_names_its_default(tmp_path) -> None:
    """`--method M --help` shows M's own options only; without --method, every method's flags with the methods
    that use them; no --method: the family's default (LoRA: linear); a family naming none is one error line."""
    from adapterhub_lite import AdapterConfig, ConfigError, get_registry
    from adapterhub_lite.combining import default_method

    runner = CliRunner()
    ties = runner.invoke(cli_app(), ["merge", "m", "a", "--method", "ties", "--out", "x", "--help"]).output
    assert "\n  --density" in ties and "\n  --rank" in ties and "\n  --seed" not in ties
    cat = runner.invoke(cli_app(), ["merge", "m", "a", "--method", "cat", "--out", "x", "--help"]).output
    assert "\n  --density" not in cat and "\n  --rank" not in cat
    every = runner.invoke(cli_app(), ["merge", "--help"]).output
    assert "--seed" in every and "Methods: dare-linear, dare-ties" in every and "cat, dare-linear" in every
    registry = get_registry()
    assert default_method(registry, {"lora"}) == "linear"
    assert AdapterConfig.combine_method is None
    with pytest.raises(ConfigError, match="name no default way to combine them: give --method"):
        default_method(registry, {"ia3"})


def test_a_method_that_reports_exact_is_checked_on_its_inputs(registry) -> None:
    """Issue 31: a merge method claiming an exact result is not trusted: the result is compared with the
    weighted sum of its inputs' deltas; a liar is recorded as inexact (with its deviation) and warned about,
    an honest exact method keeps exact with a deviation at rounding level."""
    import types

    import adapterhub_lite_lora
    from adapterhub_lite_lora.merges import merge_cat
    from conftest import randomize_adapters
    from torch import nn

    from adapterhub_lite import (AdaptedModel, AdapterhubWarning, LoraConfig, CombineMethod, CombineResult,
                                 PluginManager, Registry, hookimpl)

    def liar(inputs, *, rank=None):
        honest = merge_cat(inputs)
        state = {k: v * 1.1 if k.endswith("lora_B") else v for k, v in honest.state.items()}
        return CombineResult(configs=honest.configs, state=state, report={**honest.report, "exact": True})

    plugin = types.ModuleType("liar_plugin")
    plugin.register_combine_methods = hookimpl(lambda register: register(
        CombineMethod(name="liar", fn=liar, families=("lora",), options=())))
    pm = PluginManager()
    pm.add(adapterhub_lite_lora, name="lora")
    pm.add(plugin, name="liar")
    pm.check()
    torch.manual_seed(0)
    am = AdaptedModel(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), registry=Registry(pm))
    for name in ("a", "b"):
        am.add_adapter(name, LoraConfig(targets=["0", "2"], rank=2), activate=False)
    randomize_adapters(am.model)
    honest = am.combine({"a": 1.0, "b": -0.5}, "both", method="cat")
    assert honest["exact"] is True and honest["exact_deviation"] < 1e-6
    with pytest.warns(AdapterhubWarning, match="'liar' reported an exact result, but it deviates"):
        lied = am.combine({"a": 1.0, "b": -0.5}, "lie", method="liar")
    assert lied["exact"] is False and lied["exact_deviation"] > 0.05
    assert sorted(am.adapters) == ["a", "b", "both", "lie"]  # the inputs copied for the check are gone
