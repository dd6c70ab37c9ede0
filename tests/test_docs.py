"""Docs cannot fall behind the code: every hook and command is documented, README matches CI."""

from __future__ import annotations

import inspect
import re
import shlex
import subprocess
from pathlib import Path

import click
import pytest

from adapterhub_lite import hookspecs
from adapterhub_lite.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HOOKS = [name for name, fn in vars(hookspecs).items()
         if callable(fn) and hasattr(fn, f"{hookspecs.PROJECT}_spec")]


def _headings(path: Path) -> list[str]:
    return re.findall(r"^## (.+)$", path.read_text(), flags=re.M)


def test_hooks_are_found() -> None:
    assert {"register_adapter_types", "register_models", "register_combine_methods", "register_formats",
            "register_commands"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_heading_and_its_signature(hook: str) -> None:
    text = (DOCS / "plugin-hooks.md").read_text()
    assert hook in _headings(DOCS / "plugin-hooks.md")
    params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"{hook}({params}:" in text


def _command_paths(group: click.Group, prefix: str = "adapters") -> list[str]:
    paths = []
    for name in group.list_commands(None):
        command = group.get_command(None, name)
        if isinstance(command, click.Group):
            paths += _command_paths(command, f"{prefix} {name}")
        else:
            paths.append(f"{prefix} {name}")
    return paths


@pytest.mark.parametrize("command", _command_paths(cli))
def test_every_command_is_documented(command: str) -> None:
    assert command in _headings(DOCS / "cli.md")


def _fenced_commands(text: str, after: str) -> list[str]:
    section = text.split(after, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert block, f"no bash block after {after!r}"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_ci_installs_and_tests_exactly_as_the_readme_says() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    two = [c.split("#")[0].strip() for c in _fenced_commands(readme, "## Two commands")]
    assert two == ["make zoo", "make test"]
    assert any(line.startswith("make test ") or line == "make test" for line in ci.splitlines())
    # what `make` installs is the README's step-by-step install command, word for word
    install = [c for c in _fenced_commands(readme, "## Step by step") if c.startswith("pip install")]
    dry_run = subprocess.run(["make", "-n", "install", "VENV=/nonexistent-venv"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    made = [line for line in dry_run.splitlines() if " -m pip install " in line]
    assert len(install) == 1 and len(made) == 1
    assert shlex.split(made[0].split(" -m ", 1)[1]) == shlex.split(install[0])


def test_readme_links_point_at_files() -> None:
    for link in re.findall(r"\]\(([^)#]+)\)", (ROOT / "README.md").read_text()):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def test_the_readme_library_snippet_runs_as_written(tmp_path, monkeypatch) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The library"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["report"]["exact"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["combo-peft", "combo.safetensors", "fused.safetensors"]
    assert (tmp_path / "combo-peft" / "adapter_config.json").is_file()
    plain = namespace["plain"]
    assert plain is namespace["model"] and [type(m).__name__ for m in plain] == ["Linear", "ReLU", "Linear"]
    assert all(p.requires_grad for p in plain.parameters())  # unload gives the model back as it came: trainable


def test_the_bring_your_own_model_page_runs_as_written(tmp_path, monkeypatch) -> None:
    page = (ROOT / "docs" / "models.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) == 4
    monkeypatch.chdir(tmp_path)
    spaces: list[dict] = []
    for i, code in enumerate(blocks):
        namespace: dict = {}
        exec(compile(code, f"docs/models.md block {i + 1}", "exec"), namespace)  # noqa: S102 - our own docs
        spaces.append(namespace)
    resnet, gpt2, unet, served = spaces
    assert resnet["logits"].shape == (2, 10) and (tmp_path / "resnet-task.safetensors").is_file()
    kinds = {gpt2["am"].kind_of(m, "chat") for m in gpt2["am"].adapters["chat"].modules}
    assert kinds == {"lora-transformers-conv1d", "lora-embedding"}
    assert (tmp_path / "chat-peft" / "adapter_model.safetensors").is_file()
    assert served["y"].shape == (8, 10)
    assert unet["noise"].shape == (1, 4, 16, 16)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "style.safetensors"), "pt") as f:
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha" in f.keys()

    # the shell block: the GPT-2 through the zoo, its output the library's
    import torch
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from adapterhub_lite.cli import cli

    shell = re.findall(r"```bash\n(.*?)```", page, re.S)
    commands = [line.split()[1:] for block in shell for line in block.splitlines() if line.startswith("adapters ")]
    assert [c[:2] for c in commands] == [["zoo", "add-base"], ["import", "chat-peft"], ["apply", "my-gpt2/chat"],
                                         ["export", "my-gpt2/chat"]]
    for args in commands:
        result = CliRunner().invoke(cli, [*args, "--zoo", str(tmp_path / "zoo")])
        assert result.exit_code == 0, (args, result.output)
    with torch.no_grad():
        expected = gpt2["am"](gpt2["ids"]).last_hidden_state
    torch.testing.assert_close(load_file(str(tmp_path / "hidden.safetensors"))["last_hidden_state"], expected,
                               rtol=1e-5, atol=1e-6)


def test_the_results_page_is_what_its_renderer_writes_from_the_committed_results() -> None:
    """docs/results.md holds no hand-edited figure: rendering the committed JSON again gives the same page."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_results", DOCS / "results" / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    assert render.render() + "\n" == (DOCS / "results.md").read_text()


def test_every_figure_in_the_results_notes_says_whether_it_is_reproduced() -> None:
    """docs/results/notes.md quotes runs no committed file holds: each entry with a figure (a percentage, a
    decimal, seconds, steps per second) must say where its figures come from (*Source:*) or that they are not
    reproduced and why (*Not reproduced:*), so no hand-typed figure passes for a rendered one."""
    import re

    figure = re.compile(r"\d+(\.\d+)?%|\b\d+\.\d+\b|\b\d[\d,]* s\b|steps/s")
    text = (DOCS / "results" / "notes.md").read_text()
    entries = re.split(r"\n(?=- \*\*)", text)
    unmarked = [entry.splitlines()[0][:80] for entry in entries if entry.startswith("- **") and figure.search(entry)
                and not re.search(r"\*(Source|Not reproduced):", entry)]
    assert not unmarked, unmarked


def test_the_cnn_grid_section_judges_each_seed_and_reads_the_grid_from_the_recipes() -> None:
    """The clean CNN selection's table: the LoRA target is judged on every seed (a mean above it with one seed
    below is a miss), the grid's values come from zoo/recipes.json, candidates are listed best first."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_results", DOCS / "results" / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    steps = render.recipe_steps("mnist-cnn-grid")
    lora = [s["id"] for s in steps if s.get("search", {}).get("group") == "cnn-lora-grid"]
    tune = [s["id"] for s in steps if s.get("search", {}).get("group") == "cnn-finetune-grid"]
    seeds = [0, 1, 2]
    lora_test, tune_test = [0.96, 0.95, 0.944], [0.95, 0.95, 0.95]
    per_seed = {str(s): {"mnist-cnn-base": {"metrics": {"accuracy": 0.97}},
                         **{c: {"training_seconds": 10.0, "trainable_percent": 1.5} for c in lora + tune}}
                for s in seeds}

    def choice(ids, best, test, scope):
        return {"on": "val.accuracy", "best": best, "scores": {c: 0.9 + i / 1000 for i, c in enumerate(ids)},
                "test": {str(s): {"metrics": {scope: {"accuracy": a}} if scope else {"accuracy": a}}
                         for s, a in zip(seeds, test)}}

    result = {"profile": "mnist-cnn-grid", "seeds": seeds, "per_seed": per_seed,
              "selected": {"cnn-lora-grid": choice(lora, lora[-1], lora_test, "trained_classes"),
                           "cnn-finetune-grid": choice(tune, tune[-1], tune_test, None)}}
    page = "\n".join(render.cnn_grid(result))
    assert "rank 2 or 8" in page and "3 or 8 epochs" in page
    lora_row = next(line for line in page.splitlines() if line.startswith("| **LoRA, chosen"))
    assert "96.00%" in lora_row and "94.40%" in lora_row and "missed" in lora_row  # mean 95.13% >= 94.5%
    assert "| +1.00 | +0.00 | -0.60 |" in page
    listed = [line.split("`")[1] for line in page.splitlines() if line.startswith("| `grid-lora")]
    assert listed == lora[::-1]
    # where each choice sits in its grid, read from the recipes: the last LoRA candidate is the grid's corner
    edge = next(line for line in page.splitlines() if line.startswith("LoRA: "))
    assert f"`{lora[-1]}` was chosen with a mean validation score of 91.50%" in edge
    assert "at the grid's edge in rank (the largest tried, 8), learning rate (the largest tried" in edge
    middle = render.grid_edges("LoRA", [s for s in steps if s["id"] in lora],
                               {**choice(lora, lora[0], lora_test, None), "best": lora[0]})
    assert "rank (the smallest tried, 2)" in middle


def test_the_architecture_page_lists_every_core_module_and_no_other() -> None:
    """docs/architecture.md's module table is complete: a new module must get its one line there, a removed
    or moved one must leave."""
    import re

    package = ROOT / "adapterhub_lite"
    on_disk = {str(p.relative_to(package)) for p in package.rglob("*.py")}
    text = (DOCS / "architecture.md").read_text()
    table = text.split("## Every core module", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", table, flags=re.M))
    assert listed == on_disk, {"missing from the page": sorted(on_disk - listed),
                               "listed but not on disk": sorted(listed - on_disk)}
