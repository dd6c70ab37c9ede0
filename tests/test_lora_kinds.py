"""LoRA on transformers' Conv1D (a tiny GPT-2 built from its config), nn.Embedding and nn.Conv1d: PEFT folders
both ways with the real peft (each compared with the float64 reference of tests/conftest.py), and the cases
where PEFT would compute something else, refused."""

from __future__ import annotations

import json
import warnings

import peft  # a test extra: installed by the README's command, never skipped
import pytest
import torch
from adapterhub_lite_formats import peft as peft_format
from adapterhub_lite_lora import LoraEmbedding
from conftest import assert_matches_reference, reference_model
from torch import nn
from transformers import GPT2Config, GPT2Model

from adapterhub_lite import AdaptedModel, AdaptedModule, IncompatibleAdapterError, LoraConfig, UnsupportedModuleError, get_registry


def tiny_gpt2() -> GPT2Model:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=40, n_positions=16, n_embd=8, n_layer=2, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2Model(config).eval()


class Sequence(nn.Module):
    """Token embedding, a dilation-free Conv1d over the sequence, a Linear head."""

    def __init__(self, conv: nn.Conv1d | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)  # every instance the same base
        self.emb = nn.Embedding(30, 6, padding_idx=0)
        self.conv = conv or nn.Conv1d(6, 8, 3, padding=1, stride=2)
        self.head = nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(self.emb(ids).transpose(1, 2)).transpose(1, 2))


IDS = torch.randint(0, 30, (3, 9), generator=torch.Generator().manual_seed(3))
MODELS = {
    "gpt2": (tiny_gpt2, ["re:h\\.\\d\\.(attn\\.c_attn|attn\\.c_proj|mlp\\.c_fc)", "wte"], lambda m: m(IDS).last_hidden_state),
    "embedding-conv1d": (Sequence, ["emb", "conv", "head"], lambda m: m(IDS)),
}


def _randomized(am: AdaptedModel, name: str, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) * 0.3 for k, v in am.adapter_state(name).items()}
    am.load_adapter_state(name, state)


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_our_export_loads_in_peft_and_comes_back_with_the_reference_outputs(model_name, rslora, tmp_path) -> None:
    make, targets, run = MODELS[model_name]
    am = AdaptedModel(make(), registry=get_registry())
    am.add_adapter("x", LoraConfig(targets=targets, rank=3, alpha=5, rslora=rslora))
    kinds = {am.kind_of(m, "x") for m in am.adapters["x"].modules}
    assert kinds == ({"lora-transformers-conv1d", "lora-embedding"} if model_name == "gpt2"
                     else {"lora-embedding", "lora-conv1d", "lora-linear"})
    _randomized(am, "x")
    with torch.no_grad():
        want = run(reference_model(am))
        assert_matches_reference(run(am.model), want)
    folder = am.export("x", format="peft", dest=tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is (model_name == "gpt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(make(), str(folder)).eval()
    with torch.no_grad():
        assert_matches_reference(run(theirs), want)
        theirs.merge_adapter()
        assert_matches_reference(run(theirs), want)
    back = AdaptedModel(make(), registry=get_registry())
    back.add_bundle(peft_format.import_(folder, back))
    with torch.no_grad():
        assert_matches_reference(run(back.model), want)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_a_folder_peft_trained_and_saved_imports_with_its_outputs(model_name, tmp_path) -> None:
    make, targets, run = MODELS[model_name]
    peft_targets = targets if model_name != "gpt2" else ["c_attn", "c_proj", "c_fc", "wte"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's notes on fan_in_fan_out for Conv1D
        theirs = peft.get_peft_model(make(), peft.LoraConfig(r=2, lora_alpha=5, target_modules=peft_targets,
                                                               rank_pattern={"c_fc": 3}, alpha_pattern={"wte": 2}))
    optimizer = torch.optim.SGD([p for p in theirs.parameters() if p.requires_grad], lr=0.1)
    theirs.train()
    for _ in range(3):  # train, so B (or, on an embedding, A) is no longer zero
        loss = run(theirs).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    theirs.eval()
    theirs.save_pretrained(str(tmp_path / "theirs"), safe_serialization=True)
    with torch.no_grad():
        want = run(theirs)
    ours = AdaptedModel(make(), registry=get_registry())
    name = ours.add_bundle(peft_format.import_(tmp_path / "theirs", ours))
    assert {m for m in ours.adapters[name].modules if ours.layers()[m].configs[name].rank == 3} == (
        {"h.0.mlp.c_fc", "h.1.mlp.c_fc"} if model_name == "gpt2" else set())
    with torch.no_grad():
        assert_matches_reference(run(ours.model), want.double())


@pytest.mark.parametrize("conv", [nn.Conv1d(6, 8, 3, padding=2, dilation=2), nn.Conv1d(6, 8, 3, padding=1,
                                                                                           padding_mode="reflect")],
                         ids=["dilation", "reflect-padding"])
def test_peft_format_refuses_convs_where_peft_computes_other_outputs(conv, tmp_path) -> None:
    """PEFT's A conv takes neither the base's dilation nor its padding mode: its unmerged outputs would differ."""
    am = AdaptedModel(Sequence(conv), registry=get_registry())
    am.add_adapter("x", LoraConfig(targets=["conv"], rank=2))
    with pytest.raises(IncompatibleAdapterError, match=r"'conv' is a Conv1d with (dilation|padding_mode).*PEFT"):
        am.export("x", format="peft", dest=tmp_path / "no")
    assert not (tmp_path / "no").exists()
    plain = AdaptedModel(Sequence(), registry=get_registry())  # a folder made on an ungrouped, undilated conv ...
    plain.add_adapter("x", LoraConfig(targets=["conv"], rank=2))
    folder = plain.export("x", format="peft", dest=tmp_path / "peft")
    target = AdaptedModel(Sequence(conv), registry=get_registry())  # ... refused on a dilated or reflecting one
    with pytest.raises(IncompatibleAdapterError, match="PEFT's LoRA runs its A conv without it"):
        peft_format.import_(folder, target)


def test_embedding_lora_starts_at_zero_learns_and_leaves_the_padding_row() -> None:
    torch.manual_seed(0)
    layer = AdaptedModule(nn.Embedding(10, 4, padding_idx=0))
    layer.add("e", LoraConfig(targets="*", rank=2, dropout=0.5), LoraEmbedding)
    f = layer.adapters["e"]
    assert torch.count_nonzero(f.lora_A) == 0 and abs(f.lora_B.std().item() - 1) < 0.5  # PEFT's init
    ids = torch.tensor([[0, 3, 3, 7]])
    layer.train()
    out = layer(ids)
    assert torch.equal(out, layer.base(ids))  # a no-op at start, dropout or not (indices are not dropped)
    out.square().sum().backward()
    assert f.lora_A.grad is not None and torch.count_nonzero(f.lora_A.grad[:, [3, 7]]) > 0
    assert torch.count_nonzero(f.lora_A.grad[:, 0]) == 0  # the padding row learns nothing, as in the table
    with pytest.raises(UnsupportedModuleError, match="max_norm"):
        LoraEmbedding(nn.Embedding(10, 4, max_norm=1.0))


class Attend(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


X = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(4))


def _by_hand(in_delta: torch.Tensor, out_delta: torch.Tensor, fc_delta: torch.Tensor) -> torch.Tensor:
    """The ground truth, in float64: a plain Attend with the deltas added to its weights by hand."""
    plain = Attend().double()
    with torch.no_grad():
        plain.attn.in_proj_weight += in_delta
        plain.attn.out_proj.weight += out_delta
        plain.fc.weight += fc_delta
        return plain(X.double())


_PEFT_FIXED_OUT_PROJ = tuple(int(p) for p in peft.__version__.split(".")[:2]) >= (0, 22)


def _peft_deltas_attention_only(theirs: peft.PeftModel) -> tuple[torch.Tensor, ...]:
    attn = theirs.base_model.model.attn
    return (attn.get_delta_weight("default").detach().double(),
            attn.base_layer.out_proj.get_delta_weight("default").detach().double(),
            torch.zeros(3, 8, dtype=torch.float64))


def _peft_deltas(theirs: peft.PeftModel) -> tuple[torch.Tensor, ...]:
    attn, fc = theirs.base_model.model.attn, theirs.base_model.model.fc
    return tuple(d.detach().double() for d in (attn.get_delta_weight("default"),
                                               attn.base_layer.out_proj.get_delta_weight("default"),
                                               fc.get_delta_weight("default")))


@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("projections", [("q", "k", "v", "out"), ("q", "v"), ("out",)])
def test_attention_lora_goes_to_peft_and_back_exactly(projections, rslora, tmp_path) -> None:
    """Our pair per projection becomes PEFT's shared-A in_proj pair and its out_proj pair (stacked and padded to
    one rank, alpha raised with it); PEFT's own delta weights then equal ours, and the folder imports back."""
    am = AdaptedModel(Attend(), registry=get_registry())
    am.add_adapter("x", LoraConfig(targets=["attn", "fc"], rank=2, alpha=3, rslora=rslora,
                                   attention_projections=projections))
    _randomized(am, "x")
    with torch.no_grad():
        want = reference_model(am)(X.double())
        assert_matches_reference(am(X), want)
    folder = am.export("x", format="peft", dest=tmp_path / "peft")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(Attend(), str(folder)).eval()
    in_delta, out_delta, fc_delta = _peft_deltas(theirs)
    with torch.no_grad():
        assert_matches_reference(_by_hand(in_delta, out_delta, fc_delta).float(), want)  # the file means our deltas
        peft_out = theirs(X)
    if "out" not in projections or _PEFT_FIXED_OUT_PROJ:  # our file says peft_version 0.22.0: the delta once
        assert_matches_reference(peft_out, want)
    else:  # PEFT before 0.22 adds the out_proj delta twice (huggingface/peft#3774)
        assert torch.allclose(peft_out.double(), _by_hand(in_delta, 2 * out_delta, fc_delta), atol=1e-4)
    back = AdaptedModel(Attend(), registry=get_registry())
    back.add_bundle(peft_format.import_(folder, back))
    with torch.no_grad():
        assert_matches_reference(back(X), want)


def test_attention_lora_peft_trained_imports_with_its_delta_weights(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(Attend(), peft.LoraConfig(r=2, lora_alpha=5, target_modules=["attn", "fc"],
                                                                  rank_pattern={"attn": 3}))
    with torch.no_grad():  # PEFT starts B at zero: give every factor a value, as training would
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    theirs.save_pretrained(str(tmp_path / "theirs"), safe_serialization=True)
    want = _by_hand(*_peft_deltas(theirs))
    ours = AdaptedModel(Attend(), registry=get_registry())
    name = ours.add_bundle(peft_format.import_(tmp_path / "theirs", ours))
    config = ours.layers()["attn"].configs[name]
    assert config.rank == 3 and config.attention_projections == ("q", "k", "v", "out")
    with torch.no_grad():
        assert_matches_reference(ours(X), want)


@pytest.mark.parametrize("version,doubled", [(None, True), ("0.17.0", True), ("0.21.0", True), ("0.21.0.dev0", True),
                                             ("0.21.1.dev0", False), ("0.21.1", True), ("0.22.0", False),
                                             ("0.23.0.dev0@1a2b3c", False), ("not a version", True)])
def test_attention_files_from_peft_before_0_22_import_with_the_outputs_peft_gives_them(version, doubled,
                                                                                         tmp_path) -> None:
    """PEFT before 0.22 ran an attention module's out_proj delta twice (huggingface/peft#3774); PEFT 0.22 keeps
    such a file's outputs by doubling its out_proj lora_B on load, by the config's peft_version (None: the key is
    missing). We import by the same rule, and where PEFT is 0.22 or later its outputs are ours."""
    theirs = peft.get_peft_model(Attend(), peft.LoraConfig(r=2, lora_alpha=5, target_modules=["attn"]))
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    in_delta, out_delta, fc_delta = _peft_deltas_attention_only(theirs)
    folder = tmp_path / "theirs"
    theirs.save_pretrained(str(folder), safe_serialization=True)
    config = json.loads((folder / "adapter_config.json").read_text())
    config.pop("peft_version", None)
    if version is not None:
        config["peft_version"] = version
    (folder / "adapter_config.json").write_text(json.dumps(config))
    want = _by_hand(in_delta, (2 if doubled else 1) * out_delta, fc_delta)
    ours = AdaptedModel(Attend(), registry=get_registry())
    ours.add_bundle(peft_format.import_(folder, ours))
    with torch.no_grad():
        assert_matches_reference(ours(X), want)
        if _PEFT_FIXED_OUT_PROJ and version != "not a version":  # PEFT's parser refuses that one
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = peft.PeftModel.from_pretrained(Attend(), str(folder)).eval()
            assert_matches_reference(loaded(X), want)


@pytest.mark.parametrize("field,value,why", [
    ("use_bdlora", {"block_size": 2}, "BD-LoRA"), ("alora_invocation_tokens", [1, 2], "aLoRA"),
    ("trainable_token_indices", [3], "embedding rows"), ("lora_bias", True, "bias"),
    ("use_qalora", True, "QALoRA"), ("arrow_config", {"top_k": 2}, "Arrow"), ("kasa_config", {}, "KaSA"), ("trainable_token_indices", [], None),
    ("init_lora_weights", "pissa_niter_4", "path_initial_model_for_weight_conversion"),
    ("init_lora_weights", "olora", "modified"), ("init_lora_weights", "loftq", "modified"),
])
def test_peft_variants_that_compute_otherwise_are_refused_from_their_config(field, value, why, tmp_path) -> None:
    """Refused by the config field that makes the difference, with the reason: never by a tensor's name or shape."""
    am = AdaptedModel(Sequence(), registry=get_registry())
    am.add_adapter("x", LoraConfig(targets=["head"], rank=2))
    folder = am.export("x", format="peft", dest=tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    config[field] = value
    (folder / "adapter_config.json").write_text(json.dumps(config))
    target = AdaptedModel(Sequence(), registry=get_registry())
    if why is None:  # an empty list of tokens trains nothing
        peft_format.import_(folder, target)
        return
    with pytest.raises(IncompatibleAdapterError, match=f"{field}=.*{why}" if field != "init_lora_weights" else why):
        peft_format.import_(folder, target)


def test_extract_recovers_low_rank_changes_on_gpt2_conv1d_and_embeddings() -> None:
    from adapterhub_lite_lora import extract_lora

    base, tuned = tiny_gpt2(), tiny_gpt2()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # rank-2 changes on a Conv1D (weight stored (in, out)), the token table and a Conv1d
        tuned.h[0].attn.c_attn.weight += torch.randn(8, 2, generator=gen) @ torch.randn(2, 24, generator=gen)
        tuned.wte.weight += torch.randn(40, 2, generator=gen) @ torch.randn(2, 8, generator=gen)
    bundle, report = extract_lora(base, tuned, rank=2)
    assert sorted(bundle.configs) == ["h.0.attn.c_attn", "wte"] and report["energy_kept"] == pytest.approx(1.0)
    am = AdaptedModel(base, registry=get_registry())
    am.add_bundle(bundle)
    with torch.no_grad():
        torch.testing.assert_close(am(IDS).last_hidden_state, tuned(IDS).last_hidden_state, rtol=1e-4, atol=1e-5)
    seq, seq_tuned = Sequence(), Sequence()
    with torch.no_grad():
        seq_tuned.conv.weight += (torch.randn(8, 1, generator=gen) @ torch.randn(1, 18, generator=gen)).view(8, 6, 3)
    bundle, _ = extract_lora(seq, seq_tuned, rank=1)
    am = AdaptedModel(seq, registry=get_registry())
    am.add_bundle(bundle)
    with torch.no_grad():
        torch.testing.assert_close(am(IDS), seq_tuned(IDS), rtol=1e-4, atol=1e-5)


def test_a_hostile_peft_version_is_read_without_error() -> None:
    """The peft_version of a config from anywhere: a run of digits too long for int() (which raises past 4,300
    digits) is read by its first nine, so it still orders as the huge version it is; other text counts as
    missing (PEFT's rule: doubled)."""
    from adapterhub_lite_formats.peft_mha import out_proj_doubled

    assert out_proj_doubled({"peft_version": "9" * 50_000}) is False
    assert out_proj_doubled({"peft_version": "0." + "1" * 50_000}) is False  # minor far past 22
    assert out_proj_doubled({"peft_version": "0.0." + "9" * 50_000}) is True  # before 0.21.1
    assert out_proj_doubled({"peft_version": "x" * 50_000}) is True
