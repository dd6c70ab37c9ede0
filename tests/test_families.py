"""The families beyond LoRA, against the real peft package: ours export and peft loads them with the same
outputs; peft saves them and ours imports them with the same outputs."""

from __future__ import annotations

import warnings

import peft  # a test extra: installed by the README's command, never skipped
import pytest
import torch
from adapterhub_lite_formats import peft as peft_format
from conftest import assert_matches_reference, entries_for_kind, reference_model, reference_module
from torch import nn

from adapterhub_lite import AdaptedModel, AdapterhubWarning, LayerPolicy, get_registry

X = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(5))
TARGETS = ["conv", "fc1", "fc2"]


class Small(nn.Module):
    """A conv, then two Linears: every module type the families wrap."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).mean((2, 3)))))


@pytest.fixture
def base_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in Small().state_dict().items()}


def small(state: dict[str, torch.Tensor]) -> Small:
    model = Small()
    model.load_state_dict(state)
    return model.eval()


def _randomize(module: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _config(family: str, variant: str):
    config_class = get_registry().config_class(family)
    if family == "ia3":
        return config_class(targets=TARGETS, feedforward=variant == "feedforward")
    if family == "dora":
        return config_class(targets=TARGETS, rank=2, alpha=3.0, rslora=variant == "rslora")
    extra = {"decompose_both": True, "decompose_factor": 2} if variant == "decomposed" else {}
    if variant == "tucker":  # LoKr's w2 on the 3x3 conv is decomposed (and so a Tucker core) at rank 1
        return config_class(targets=TARGETS, rank=1 if family == "lokr" else 2, alpha=3.0, tucker=True)
    return config_class(targets=TARGETS, rank=2, alpha=3.0, **extra)


CASES = [("loha", "plain"), ("loha", "tucker"), ("lokr", "plain"), ("lokr", "decomposed"), ("lokr", "tucker"),
         ("ia3", "output"), ("ia3", "feedforward"), ("dora", "plain"), ("dora", "rslora")]


@pytest.mark.parametrize("family, variant", CASES)
def test_ours_export_loads_in_peft_with_the_same_outputs(tmp_path, base_state, family, variant) -> None:
    am = AdaptedModel(small(base_state), registry=get_registry())
    am.add_adapter("x", _config(family, variant))
    _randomize(am.model)
    with torch.no_grad():
        want = reference_model(am)(X.double())
        assert_matches_reference(am(X), want)
    folder = am.export("x", format="peft", dest=tmp_path / "peft")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(small(base_state), str(folder)).eval()
    with torch.no_grad():
        assert_matches_reference(loaded(X), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dora_on_zero_channels_keeps_them_zero_instead_of_nan(base_state, dtype) -> None:
    """A pruned or zero-initialised output channel (PEFT issue #2049 reports them in Llama-3.1-8B's o_proj, where
    DoRA gives NaN at the first step) has no direction: DoRA leaves it at its bias, and everything stays finite."""
    base_state = {k: v.clone() for k, v in base_state.items()}
    base_state["conv.weight"][2] = 0
    base_state["fc1.weight"][5] = 0
    am = AdaptedModel(small(base_state).to(dtype), registry=get_registry())
    am.add_adapter("x", _config("dora", "plain"))
    inputs = X.to(dtype)
    with torch.no_grad():
        torch.testing.assert_close(am(inputs), small(base_state).to(dtype)(inputs))  # a fresh adapter changes nothing
    trainable = [p for p in am.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        am(inputs).square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in trainable)
        optimizer.step()
    with torch.no_grad():
        conv, fc1 = am.model.conv(inputs), am.model.fc1(torch.ones(2, 6, dtype=dtype))
        assert torch.isfinite(am(inputs)).all() and torch.isfinite(conv).all()
        assert torch.equal(conv[:, 2], am.model.conv.base.bias[2].expand_as(conv[:, 2]))
        assert torch.equal(fc1[:, 5], am.model.fc1.base.bias[5].expand(2))
        if dtype == torch.float32:  # the definition in float64 (tests/conftest.py), and the merged weights
            assert_matches_reference(am(inputs), reference_model(am)(inputs.double()))
            unmerged = am(inputs)
            am.fold(["x"])
            torch.testing.assert_close(am(inputs), unmerged)


@pytest.mark.parametrize("fmt", ["peft", "kohya"])
def test_exporting_dora_with_zero_channels_warns_that_readers_give_nan(tmp_path, base_state, fmt) -> None:
    """The file is exact, but PEFT divides by each channel's norm of W + s B A: where it is zero, NaN."""
    plain = AdaptedModel(small(base_state), registry=get_registry())
    plain.add_adapter("x", _config("dora", "plain"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", AdapterhubWarning)
        plain.export("x", format=fmt, dest=tmp_path / "plain")  # no zero channel: no warning
    base_state = {k: v.clone() for k, v in base_state.items()}
    base_state["conv.weight"][2] = 0
    base_state["fc1.weight"][4:6] = 0
    pruned = AdaptedModel(small(base_state), registry=get_registry())
    pruned.add_adapter("x", _config("dora", "plain"))
    with pytest.warns(AdapterhubWarning, match=r"in conv \(1\), fc1 \(2\): .* NaN"):
        pruned.export("x", format=fmt, dest=tmp_path / "pruned")


PEFT_CONFIGS = {
    "loha": lambda: peft.LoHaConfig(r=2, alpha=3, target_modules=TARGETS, init_weights=False,
                                    rank_pattern={"fc2": 3}, alpha_pattern={"conv": 5}),
    "lokr": lambda: peft.LoKrConfig(r=2, alpha=3, target_modules=TARGETS, init_weights=False,
                                    rank_pattern={"fc1": 1}, alpha_pattern={"conv": 5}),
    "lokr-decomposed": lambda: peft.LoKrConfig(r=1, alpha=3, target_modules=TARGETS, init_weights=False,
                                               decompose_both=True, decompose_factor=2),
    # Tucker conv kernels (issue 32, item 6): hada_t1/t2 on the 3x3 conv; lokr_t2 where w2 is decomposed (r=1)
    "loha-tucker": lambda: peft.LoHaConfig(r=2, alpha=3, target_modules=TARGETS, init_weights=False,
                                           use_effective_conv2d=True, alpha_pattern={"conv": 5}),
    "lokr-tucker": lambda: peft.LoKrConfig(r=1, alpha=3, target_modules=TARGETS, init_weights=False,
                                           use_effective_conv2d=True, alpha_pattern={"conv": 5}),
    "ia3": lambda: peft.IA3Config(target_modules=TARGETS, feedforward_modules=["fc2"], init_ia3_weights=False),
    "dora": lambda: peft.LoraConfig(r=2, lora_alpha=3, target_modules=TARGETS, use_dora=True,
                                    init_lora_weights=False, rank_pattern={"fc2": 3}, alpha_pattern={"conv": 5}),
}


@pytest.mark.parametrize("case", PEFT_CONFIGS)
def test_a_folder_peft_saves_imports_with_the_same_outputs(tmp_path, base_state, case) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = peft.get_peft_model(small(base_state), PEFT_CONFIGS[case]()).eval()
    with torch.no_grad():
        want = trained(X)
        assert not torch.allclose(want, small(base_state)(X))  # the adapter does something
    trained.save_pretrained(str(tmp_path / "saved"))
    ours = AdaptedModel(small(base_state), registry=get_registry())
    bundle = peft_format.import_(tmp_path / "saved", ours)
    assert bundle.family == case.split("-")[0]
    if case.endswith("tucker"):
        assert {"conv.hada_t1", "conv.hada_t2"} <= set(bundle.state) or "conv.lokr_t2" in bundle.state
    ours.add_bundle(bundle)
    with torch.no_grad():
        torch.testing.assert_close(ours(X), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
        assert_matches_reference(ours(X), reference_model(ours)(X.double()))


@pytest.mark.parametrize("family, options", [("loha", ["--rank", "2", "--alpha", "2"]),
                                             ("lokr", ["--rank", "2", "--decompose-both"]),
                                             ("dora", ["--rank", "1", "--alpha", "1"]),
                                             ("ia3", ["--feedforward"])])
def test_every_family_trains_applies_and_is_refused_by_lora_merges_from_the_command_line(tmp_path, family,
                                                                                         options) -> None:
    import json

    from click.testing import CliRunner

    from adapterhub_lite.cli import cli

    zoo = str(tmp_path / "zoo")
    runner = CliRunner()
    base = runner.invoke(cli, ["train-base", "richboynet", "--steps", "20", "--batch-size", "16", "--zoo", zoo])
    assert base.exit_code == 0, base.output
    trained = runner.invoke(cli, ["train", "richboynet", "nines", "--family", family, *options, "--classes", "9",
                                  "--steps", "20", "--batch-size", "8", "--json", "--zoo", zoo])
    assert trained.exit_code == 0, trained.output
    card = json.loads(trained.stdout)
    assert card["family"] == family and card["metrics"]["trained_classes"]["total"] == 1009
    applied = runner.invoke(cli, ["apply", "richboynet/nines", "--eval", "--json", "--zoo", zoo])
    assert applied.exit_code == 0 and json.loads(applied.stdout)["accuracy"] == card["metrics"]["all"]["accuracy"]
    refused = runner.invoke(cli, ["merge", "richboynet", "nines", "--method", "linear", "--out", "m", "--dry-run",
                                  "--zoo", zoo])
    assert refused.exit_code == 1 and f"is a {family!r} adapter; method 'linear' combines 'lora'" in refused.stderr


class _Holder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.inner(*args)
        return out[0] if isinstance(out, tuple) else out


_MODULES = {nn.Linear: (lambda: nn.Linear(6, 4), lambda: (torch.randn(2, 6),)),
            nn.Conv2d: (lambda: nn.Conv2d(2, 4, 3), lambda: (torch.randn(1, 2, 5, 5),)),
            nn.MultiheadAttention: (lambda: nn.MultiheadAttention(4, 2), lambda: (torch.randn(3, 1, 4),) * 3)}


@pytest.mark.parametrize("kind_name", sorted(k for k, o in get_registry().kinds.items()
                                             if entries_for_kind(o.spec, _MODULES)))
def test_every_kind_saves_and_loads_through_the_native_file_with_its_own_kind(tmp_path, kind_name) -> None:
    """The file records each module's kind; one layer class serves a Linear kind and a Conv2d kind, so the kind
    is the registry's choice for the module, not the first kind with that class."""
    kind = get_registry().get_kind(kind_name)
    make, inputs = entries_for_kind(kind, _MODULES)[0]
    torch.manual_seed(0)
    state = make().state_dict()
    models = []
    for _ in range(2):
        module = make()
        module.load_state_dict(state)
        models.append(AdaptedModel(_Holder(module).eval(), registry=get_registry()))
    models[0].add_adapter("x", kind.config(targets=["inner"]))
    _randomize(models[0].model)
    assert models[0].bundle("x").kinds == {"inner": kind_name}
    models[1].load_adapter(models[0].save_adapter("x", tmp_path / "x.safetensors"))
    x = inputs()
    with torch.no_grad():
        assert torch.equal(models[1](*x), models[0](*x))


@pytest.mark.parametrize("value, message", [("a,4", "w1_shape must be two integers OUT,IN, got 'a,4'"),
                                            ("2,3,4", "w1_shape must be two positive integers OUT,IN")])
def test_a_bad_family_option_value_is_one_usage_line(tmp_path, value, message) -> None:
    from click.testing import CliRunner

    from adapterhub_lite.cli import cli

    result = CliRunner().invoke(cli, ["train", "richboynet", "x", "--family", "lokr", "--w1-shape", value,
                                      "--zoo", str(tmp_path / "zoo")])
    assert result.exit_code in (1, 2) and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "zoo" / "richboynet").exists()


# --- parity beyond the merged path (issue 31, item 7) ------------------------------------------------------------
TRAINING_CONFIGS = {
    **PEFT_CONFIGS,
    "lora": lambda: peft.LoraConfig(r=2, lora_alpha=3, target_modules=TARGETS, init_lora_weights=False),
    "lora-rslora": lambda: peft.LoraConfig(r=3, lora_alpha=5, target_modules=TARGETS, init_lora_weights=False,
                                           use_rslora=True),
}
POLICIES = {"default": LayerPolicy(), "cache-off": LayerPolicy(fold_limit=0),
            "no-merged-training": LayerPolicy(folded_training=False)}


def _peft_and_ours(tmp_path, base_state, case: str, policy: LayerPolicy):
    """A PEFT model of `case` with random adapter weights, and ours holding the same adapter (PEFT's folder
    imported), under `policy`."""
    torch.manual_seed(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(small(base_state), TRAINING_CONFIGS[case]())
    theirs.save_pretrained(str(tmp_path / "saved"))
    ours = AdaptedModel(small(base_state), registry=get_registry(), policy=policy)
    ours.add_bundle(peft_format.import_(tmp_path / "saved", ours))
    return theirs, ours


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("case", TRAINING_CONFIGS)
def test_training_mode_outputs_and_one_step_match_peft(tmp_path, base_state, case, policy) -> None:
    """In training mode, with autograd on: the same outputs; then one SGD step on the same loss gives the same
    model, so the gradients agree (DoRA's norm detached as PEFT detaches it, convs trained through merged
    weights or not, the merged-weight cache on or off)."""
    theirs, ours = _peft_and_ours(tmp_path, base_state, case, POLICIES[policy])
    theirs.train()
    ours.train()
    target = torch.randn(3, 4, generator=torch.Generator().manual_seed(7))
    steps = []
    for model, params in ((theirs, [p for p in theirs.parameters() if p.requires_grad]),
                          (ours, ours.trainable_parameters())):
        out = model(X)
        torch.nn.functional.mse_loss(out, target).backward()
        torch.optim.SGD(params, lr=0.5).step()
        steps.append(out.detach())
    torch.testing.assert_close(steps[1], steps[0], rtol=1e-5, atol=1e-5 * steps[0].abs().max().item())
    theirs.eval()
    ours.eval()
    with torch.no_grad():
        want, got = theirs(X), ours(X)
    tolerance = 1e-5 * want.abs().max().item()
    assert (want - steps[0]).abs().max() > 20 * tolerance  # the step changed the model beyond the tolerance
    torch.testing.assert_close(got, want, rtol=1e-5, atol=tolerance)


@pytest.mark.parametrize("case", TRAINING_CONFIGS)
def test_cache_off_inference_matches_peft(tmp_path, base_state, case) -> None:
    theirs, ours = _peft_and_ours(tmp_path, base_state, case, POLICIES["cache-off"])
    with torch.no_grad():
        want = theirs.eval()(X)
        torch.testing.assert_close(ours.eval()(X), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("family", ["lora", "dora", "loha", "lokr", "ia3"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_merges_accumulate_in_float32(family, dtype) -> None:
    """Large base weights, eight adapters of small deltas: a merge that added each delta in half precision would
    round eight times (an error of several units in the last place); accumulated in float32 and rounded once,
    the merged weight is the float64 result (tests/conftest.py's reference) rounded, within one unit in the last
    place."""
    torch.manual_seed(0)
    model = Small()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(500 + torch.rand(p.shape) * 200)  # where a half's last place is 0.25-0.5 (bfloat16: 2-4)
    am = AdaptedModel(model.to(dtype).eval(), registry=get_registry())
    names = [f"a{i}" for i in range(8)]
    for name in names:
        am.add_adapter(name, _config(family, "plain"))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(dtype) * (0.002 if family == "ia3" else 0.3))
    am.set_active(names)
    exact = {module: dict(reference_module(layer, [(n, 1.0) for n in names]).named_parameters())
             for module, layer in am.layers().items()}
    if family == "dora":  # m / n is rounded to the dtype by definition (the forward's, and PEFT's): the rest is not
        for module, layer in am.layers().items():
            original = layer.base_state()["weight"].double()
            total = original.clone()
            for name in names:
                kind = layer.layer_of(name)
                ratio = kind._ratio(name).double().view(-1, *(1,) * (original.dim() - 1))
                total += ratio * (original + kind.factor_weight(kind.factors(name)).double()) - original
            exact[module]["weight"] = total
    am.fold()
    worst = 0.0
    for module, layer in am.layers().items():
        for path, param in layer.base.named_parameters():
            want = exact[module][path].double()
            ulp = torch.finfo(dtype).eps * want.abs().clamp_min(1.0)
            worst = max(worst, float(((param.double() - want).abs() / ulp).max()))
    assert worst <= 1.0, f"merged weights are {worst:.1f} units in the last place from the float64 result"
