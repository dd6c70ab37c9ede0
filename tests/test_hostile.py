"""Hostile inputs and faults, black-box through the command line.

Every case asserts: the exit code, at most two lines of stderr and no traceback, the zoo tree byte-identical
afterwards, and nothing written anywhere else in the sandbox. File-system faults (a read-only zoo or
destination, a full disk) run in a private mount namespace (`unshare`) on a tiny tmpfs or a read-only bind
mount; the same code paths are also driven in-process with an `os` call patched to fail, so they are
covered where namespaces are not available.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from capabilities import need
import torch
from click.testing import CliRunner
from conftest import seed_adapter, seed_base
from safetensors.torch import load_file, save_file

from adapterhub_lite import AdaptedModel, AdapterFileError, LoraConfig, get_registry, load_base
from adapterhub_lite.cli import cli
from adapterhub_lite.zoo.compositions import compose
from adapterhub_lite.zoo import Zoo

MODEL = "mnist-cnn"


# --- the sandbox ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A small zoo built once: a base, two adapters, a composition; and files exported from it."""
    root = tmp_path_factory.mktemp("template")
    zoo = Zoo(root / "zoo")
    registry = get_registry()
    base = seed_base(registry, zoo, MODEL)
    seed_adapter(registry, zoo, base, "a", LoraConfig(targets=["fc*"], rank=2, alpha=4), seed=1)
    seed_adapter(registry, zoo, base, "b", LoraConfig(targets=["fc*"], rank=1), seed=2)
    compose(zoo, MODEL, "mix", ["a=0.5", "b"])
    files = root / "files"
    runner = CliRunner()
    for fmt, out in (("native", "a.safetensors"), ("peft", "a-peft"), ("kohya", "a-kohya.safetensors"),
                     ("merged", "merged.safetensors")):
        result = runner.invoke(cli, ["export", f"{MODEL}/a", "--format", fmt, "--out", str(files / out),
                                     "--zoo", str(zoo.root)])
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def sandbox(template, tmp_path) -> Path:
    shutil.copytree(template / "zoo", tmp_path / "zoo")
    shutil.copytree(template / "files", tmp_path / "files")
    return tmp_path


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under root with its type and content hash (or link target): equal trees are identical."""
    out: dict[str, tuple[Any, ...]] = {}
    for path in sorted(root.rglob("*")) if root.exists() else []:
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        elif path.stat().st_size > 64 << 20:  # a sparse hostile file: size and time, not terabytes of zeros
            out[rel] = ("file", path.stat().st_size, path.stat().st_mtime_ns)
        else:
            out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def cli_run(sandbox: Path, *args: str, env: dict[str, str] | None = None):
    """Run `adapters ARGS` in-process on the sandbox's zoo; returns the click result."""
    return CliRunner().invoke(cli, list(args), env={"ADAPTERS_ZOO": str(sandbox / "zoo"), **(env or {})})


def refused(result, *needles: str, code: int = 1) -> str:
    """The command failed with `code`, one or two lines on stderr, no traceback, mentioning every needle."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and "Traceback" not in result.output, result.stderr
    assert len(result.stderr) < 1500, f"{len(result.stderr)} characters of stderr"
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    return lines[0]


def untouched(sandbox: Path, before: dict[str, tuple[Any, ...]]) -> None:
    assert tree(sandbox) == before


# --- names ------------------------------------------------------------------------------------------------------
HOSTILE_NAMES = ["../../escape", "..", ".", "/abs/path", "-leading-dash", "a/b", "", "trailing\n", " spaced",
                 ".hidden", "x" * 300, "ünïcode", "semi;colon", "v1.5"]


def _creating_commands(name: str, files: Path) -> list[list[str]]:
    return [
        ["import", str(files / "a.safetensors"), "--model", MODEL, "--name", name],
        ["import", str(files / "merged.safetensors"), "--format", "merged", "--model", MODEL, "--name", name],
        ["compose", MODEL, "--", name, "a=0.5"],  # after "--": a leading dash is not read as an option
        ["merge", MODEL, "a", "b", "--method", "cat", "--out", name],
        ["merge", MODEL, "a", "b", "--method", "cat", "--out", name, "--dry-run"],
        ["merge", MODEL, "a", "--into-base", "--out", name],
        ["train", MODEL, "--steps", "1", "--", name],
        ["extract", MODEL, "base", "--rank", "1", "--out", name],
    ]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_every_creating_command_enforces_the_name_rule(sandbox, name) -> None:
    before = tree(sandbox)
    for args in _creating_commands(name, sandbox / "files"):
        line = refused(cli_run(sandbox, *args))
        assert "name" in line and ("1 to 64 characters" in line or "invalid" in line), (args, line)
    untouched(sandbox, before)


def test_base_is_reserved_for_bases(sandbox) -> None:
    before = tree(sandbox)
    for args in (["import", str(sandbox / "files" / "a.safetensors"), "--model", MODEL, "--name", "base"],
                 ["compose", MODEL, "base", "a"], ["merge", MODEL, "a", "--method", "cat", "--out", "base"]):
        refused(cli_run(sandbox, *args), "'base' is reserved for base models")
    untouched(sandbox, before)


def test_a_good_name_still_works_and_is_reachable_by_ref(sandbox) -> None:
    result = cli_run(sandbox, "import", str(sandbox / "files" / "a.safetensors"), "--model", MODEL,
                     "--name", "_ok-Name_9")
    assert result.exit_code == 0, result.output
    assert Zoo(sandbox / "zoo").resolve(f"{MODEL}/_ok-Name_9").version == 1


# --- symbolic links -------------------------------------------------------------------------------------------
def test_a_linked_entry_folder_is_never_written_through(sandbox) -> None:
    outside = sandbox / "outside"
    outside.mkdir()
    (sandbox / "zoo" / MODEL / "c").symlink_to(outside, target_is_directory=True)
    before = tree(sandbox)
    refused(cli_run(sandbox, "import", str(sandbox / "files" / "a.safetensors"), "--model", MODEL, "--name", "c"),
            "symbolic link")
    untouched(sandbox, before)
    assert list(outside.iterdir()) == []


def test_a_linked_model_folder_is_neither_read_nor_written(sandbox) -> None:
    real = sandbox / "real-model"
    shutil.move(sandbox / "zoo" / MODEL, real)
    (sandbox / "zoo" / MODEL).symlink_to(real, target_is_directory=True)
    before = tree(sandbox)
    refused(cli_run(sandbox, "import", str(sandbox / "files" / "a.safetensors"), "--model", MODEL, "--name", "c"))
    refused(cli_run(sandbox, "compose", MODEL, "c", "a"))
    untouched(sandbox, before)


def test_an_old_lock_file_linked_outside_is_not_truncated(sandbox) -> None:
    victim = sandbox / "victim.txt"
    victim.write_text("precious")
    (sandbox / "zoo" / MODEL / ".lock").symlink_to(victim)
    result = cli_run(sandbox, "compose", MODEL, "c", "a")
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("which", ["adapter.safetensors", "card.json"])
def test_linked_files_inside_an_entry_are_refused_when_read(sandbox, which) -> None:
    entry = sandbox / "zoo" / MODEL / "a" / "v1"
    copy = sandbox / f"copy-{which}"
    shutil.move(entry / which, copy)
    (entry / which).symlink_to(copy)
    before = tree(sandbox)
    refused(cli_run(sandbox, "zoo", "show", f"{MODEL}/a"), "link")
    refused(cli_run(sandbox, "apply", f"{MODEL}/a", "--eval"), "link")
    untouched(sandbox, before)


# --- damaged cards ---------------------------------------------------------------------------------------------
def _card(sandbox: Path, name: str) -> Path:
    return sandbox / "zoo" / MODEL / name / "v1" / "card.json"


DAMAGE = {
    "a list": lambda card: [],
    "an empty object": lambda card: {},
    "a string version": lambda card: {**card, "version": "1"},
    "files as a list": lambda card: {**card, "files": ["adapter.safetensors"]},
    "base as a string": lambda card: {**card, "base": "mnist-cnn/base@v1"},
    "no base fingerprint": lambda card: {**card, "base": {"ref": "mnist-cnn/base@v1"}},
    "metrics as a list": lambda card: {**card, "metrics": [1, 2]},
    "an unknown kind": lambda card: {**card, "kind": "weird"},
    "another entry's name": lambda card: {**card, "name": "a"},
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_card_is_listed_as_damaged_and_refused_in_use(sandbox, damage) -> None:
    path = _card(sandbox, "b")
    path.write_text(json.dumps(DAMAGE[damage](json.loads(path.read_text()))))
    before = tree(sandbox)
    listing = cli_run(sandbox, "zoo", "list")
    line = refused(listing, "1 damaged entry", f"{MODEL}/b@v1")
    assert line.startswith("Error: ")
    assert f"{MODEL}/b@v1  DAMAGED: " in listing.stdout
    for other in ("base@v1", "a@v1", "mix@v1"):
        assert f"{MODEL}/{other}  " in listing.stdout  # every other entry is still listed
    as_json = json.loads(cli_run(sandbox, "zoo", "list", "--json").stdout)
    assert [row["ref"] for row in as_json if "damaged" in row] == [f"{MODEL}/b@v1"] and len(as_json) == 4
    refused(cli_run(sandbox, "zoo", "show", f"{MODEL}/b"), "damaged")
    refused(cli_run(sandbox, "apply", f"{MODEL}/b", "--eval"), "damaged")
    refused(cli_run(sandbox, "apply", f"{MODEL}/mix", "--eval"), "damaged")  # a composition naming it
    untouched(sandbox, before)


def test_invalid_card_json_and_huge_metric_values(sandbox) -> None:
    _card(sandbox, "b").write_text("{not json" + "x" * 100_000)
    before = tree(sandbox)
    refused(cli_run(sandbox, "zoo", "list"), "damaged")
    refused(cli_run(sandbox, "zoo", "show", f"{MODEL}/b"), "not valid JSON")
    untouched(sandbox, before)


# --- tensors: non-finite, integer, oversize headers, wrong JSON types -------------------------------------------
def _native_variant(files: Path, name: str, change) -> Path:
    source = files / "a.safetensors"
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(source))
    tensors, metadata = change(tensors, metadata)
    out = files / f"{name}.safetensors"
    save_file(tensors, str(out), metadata=metadata)
    return out


def _first(tensors: dict[str, torch.Tensor], value: float) -> dict[str, torch.Tensor]:
    key = sorted(tensors)[0]
    changed = tensors[key].clone()
    changed.view(-1)[0] = value
    return {**tensors, key: changed}


def _meta(field: str, value: Any):
    def change(tensors, metadata):
        doc = json.loads(metadata["adapterhub_lite"])
        doc[field] = value
        return tensors, {**metadata, "adapterhub_lite": json.dumps(doc)}
    return change


NATIVE = {
    "nan": (lambda t, m: (_first(t, float("nan")), m), "NaN or infinity"),
    "inf": (lambda t, m: (_first(t, float("inf")), m), "NaN or infinity"),
    "int32": (lambda t, m: ({k: (v * 100).to(torch.int32) for k, v in t.items()}, m), "floating-point"),
    "family as a number": (_meta("family", 3), "'family' is 3"),
    "targets as a list": (_meta("targets", ["fc1"]), "'targets'"),
    "config as a string": (_meta("config", "rank=2"), "'config'"),
    "fingerprints as a list": (_meta("base_module_fingerprints", ["x"]), "base_module_fingerprints"),
    "alpha as a string": (_meta("config", {"kind": "lora", "targets": ["fc*"], "rank": 2, "alpha": "four"}),
                          "alpha must be a positive number"),
    "a 10 MB field": (_meta("name", "n" * 10_000_000), "over the 4,194,304 a real adapter needs"),
}


@pytest.mark.parametrize("case", NATIVE)
def test_bad_native_files_are_refused(sandbox, case) -> None:
    change, needle = NATIVE[case]
    path = _native_variant(sandbox / "files", "bad", change)
    before = tree(sandbox)
    refused(cli_run(sandbox, "import", str(path), "--model", MODEL, "--name", "bad"), needle)
    if case not in ("nan", "inf", "int32", "alpha as a string"):  # inspect reads neither tensors nor configs
        refused(cli_run(sandbox, "inspect", str(path)), needle)
    untouched(sandbox, before)


def _write_raw(path: Path, header: dict[str, Any], data: bytes = b"", claimed: int | None = None) -> Path:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", claimed if claimed is not None else len(encoded)) + encoded + data)
    return path


def test_oversize_and_lying_headers_are_refused_before_mapping(sandbox) -> None:
    files = sandbox / "files"
    terabytes = 3 << 40
    cases = {
        "a header claiming a terabyte": (_write_raw(files / "h1.safetensors", {}, claimed=1 << 40), "header claims"),
        "a tensor past the end": (_write_raw(files / "h2.safetensors", {"x": {
            "dtype": "F32", "shape": [terabytes // 4], "data_offsets": [0, terabytes]}}), "past the end"),
        "a shape that does not add up": (_write_raw(files / "h3.safetensors", {"x": {
            "dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8), "needs 16 bytes"),
        "an unknown dtype": (_write_raw(files / "h4.safetensors", {"x": {
            "dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\0"), "dtype 'Q7'"),
        "a header that is a list": (_write_raw(files / "h5.safetensors", [1, 2]), "not a JSON object"),  # type: ignore[arg-type]
    }
    sparse = _write_raw(files / "h6.safetensors", {"x": {"dtype": "F32", "shape": [terabytes // 4],
                                                         "data_offsets": [0, terabytes]}})
    with open(sparse, "r+b") as handle:  # a sparse file really that long: sizes agree, memory does not
        handle.truncate(sparse.stat().st_size + terabytes)
    cases["a sparse multi-terabyte tensor"] = (sparse, "more than this machine's memory")
    before = tree(sandbox)
    for label, (path, needle) in cases.items():
        refused(cli_run(sandbox, "inspect", str(path)), needle)
        for fmt in ("native", "kohya", "merged"):
            refused(cli_run(sandbox, "import", str(path), "--format", fmt, "--model", MODEL, "--name", "h"), needle)
    untouched(sandbox, before)


def _peft_variant(files: Path, change_config=None, change_tensors=None) -> Path:
    folder = files / "peft-bad"
    shutil.copytree(files / "a-peft", folder)
    if change_config is not None:
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps(change_config(config)))
    if change_tensors is not None:
        tensors = load_file(str(folder / "adapter_model.safetensors"))
        save_file(change_tensors(tensors), str(folder / "adapter_model.safetensors"))
    return folder


PEFT = {
    "config is a list": ((lambda c: []), None, "not an object"),
    "config is null": ((lambda c: None), None, "not an object"),
    "alpha as a string": ((lambda c: {**c, "lora_alpha": "8"}), None, "lora_alpha is '8'"),
    "pattern key not a regex": ((lambda c: {**c, "alpha_pattern": {"fc(": 2}}), None, "not a valid regular"),
    "pattern value a string": ((lambda c: {**c, "rank_pattern": {"fc1": "2"}}), None, "not a number"),
    "rslora as a string": ((lambda c: {**c, "use_rslora": "yes"}), None, "use_rslora"),
    "nan factor": (None, (lambda t: _first(t, float("nan"))), "NaN or infinity"),
    "int factor": (None, (lambda t: {k: v.to(torch.int64) for k, v in t.items()}), "floating-point"),
}


@pytest.mark.parametrize("case", PEFT)
def test_bad_peft_folders_are_refused(sandbox, case) -> None:
    change_config, change_tensors, needle = PEFT[case]
    folder = _peft_variant(sandbox / "files", change_config, change_tensors)
    before = tree(sandbox)
    refused(cli_run(sandbox, "import", str(folder), "--format", "peft", "--model", MODEL, "--name", "p"), needle)
    untouched(sandbox, before)


def test_bad_kohya_and_merged_files_are_refused(sandbox) -> None:
    files = sandbox / "files"
    kohya = load_file(str(files / "a-kohya.safetensors"))
    alpha_key = next(k for k in kohya if k.endswith(".alpha"))
    down_key = next(k for k in kohya if k.endswith("lora_down.weight"))
    cases = {
        "kohya vector alpha": ("kohya", {**kohya, alpha_key: torch.ones(3)}, "one number"),
        "kohya inf factor": ("kohya", _first({down_key: kohya[down_key]}, float("inf")) | {
            k: v for k, v in kohya.items() if k != down_key}, "NaN or infinity"),
    }
    merged = load_file(str(files / "merged.safetensors"))
    weight = next(k for k in merged if k.endswith("weight"))
    cases["merged nan parameter"] = ("merged", {**merged, weight: merged[weight].clone().fill_(float("nan"))},
                                     "NaN or infinity")
    cases["merged int parameter"] = ("merged", {**merged, weight: merged[weight].to(torch.int32)}, "int32")
    cases["merged missing tensor"] = ("merged", {k: v for k, v in merged.items() if k != weight}, "does not fit")
    for i, (label, (fmt, tensors, needle)) in enumerate(cases.items()):
        path = files / f"bad{i}.safetensors"
        save_file(tensors, str(path))
        before = tree(sandbox)
        refused(cli_run(sandbox, "import", str(path), "--format", fmt, "--model", MODEL, "--name", "k"), needle)
        untouched(sandbox, before)


def test_the_library_refuses_non_finite_adapters_too(sandbox) -> None:
    path = _native_variant(sandbox / "files", "nan", NATIVE["nan"][0])
    zoo = Zoo(sandbox / "zoo")
    am = AdaptedModel(load_base(get_registry(), zoo.resolve(MODEL)), registry=get_registry())
    with pytest.raises(AdapterFileError, match="NaN or infinity"):
        am.load_adapter(path, ignore_fingerprint=True)
    assert am.adapters == {} and am.layers() == {}


# --- the network ------------------------------------------------------------------------------------------------
@pytest.fixture
def dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    return f"http://127.0.0.1:{port}"


def test_hub_failures_are_one_line(sandbox, dead_endpoint) -> None:
    cache = sandbox / "hf-cache"
    base_env = {"HF_ENDPOINT": dead_endpoint, "HF_HUB_CACHE": str(cache), "HF_TOKEN": "hf_dummy",
                "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    before = tree(sandbox / "zoo")
    refused(cli_run(sandbox, "push", f"{MODEL}/a", "--repo", "me/a", env=base_env),
            "could not push to me/a", "could not be reached")
    refused(cli_run(sandbox, "pull", "me/a", env=base_env), "could not download me/a", "could not be reached")
    offline = {**base_env, "HF_HUB_OFFLINE": "1"}
    refused(cli_run(sandbox, "push", f"{MODEL}/a", "--repo", "me/a", env=offline), "HF_HUB_OFFLINE is set")
    refused(cli_run(sandbox, "pull", "me/a", env=offline), "not in the local Hub cache")
    refused(cli_run(sandbox, "push", f"{MODEL}/a", "--repo", "not a repo", env=offline), "bad repo")
    staged = cli_run(sandbox, "push", f"{MODEL}/a", "--repo", "me/a", "--dry-run", str(sandbox / "stage"),
                     env=offline)
    assert staged.exit_code == 0, staged.output
    assert sorted(p.name for p in (sandbox / "stage").iterdir()) == ["README.md", "adapter.safetensors", "card.json"]
    assert tree(sandbox / "zoo") == before


# --- the error boundary ---------------------------------------------------------------------------------------
def _boundary_group():
    import click

    from adapterhub_lite.cli import AdaptersGroup

    @click.group(cls=AdaptersGroup)
    def group() -> None: ...

    @group.command("oserror")
    def oserror() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/some/file")

    @group.command("json")
    def bad_json() -> None:
        json.loads("{nope")

    @group.command("safetensors")
    def bad_safetensors() -> None:
        from safetensors.torch import load

        load(b"\x00" * 4)

    @group.command("bug")
    def bug() -> None:
        raise ZeroDivisionError("a real bug")

    group._plugins_loaded = True  # no plugin commands in this bare group
    return group


@pytest.mark.parametrize("command, needle", [("oserror", "/some/file: no space left on device"),
                                             ("json", "not valid JSON"), ("safetensors", "safetensors file")])
def test_the_boundary_turns_leaked_faults_into_one_line(command, needle) -> None:
    group = _boundary_group()
    refused(CliRunner().invoke(group, [command]), needle, "ADAPTERS_DEBUG=1")
    debug = CliRunner().invoke(group, [command], env={"ADAPTERS_DEBUG": "1"})
    assert debug.exit_code == 1 and debug.exception is not None and not isinstance(debug.exception, SystemExit)


def test_a_real_bug_keeps_its_traceback() -> None:
    result = CliRunner().invoke(_boundary_group(), ["bug"])
    assert isinstance(result.exception, ZeroDivisionError)


# --- file-system faults, in-process (any machine) -----------------------------------------------------------------
@pytest.mark.parametrize("code, needle", [(errno.ENOSPC, "no space left on device"),
                                          (errno.EROFS, "read-only"), (errno.EACCES, "permission denied"),
                                          (errno.EDQUOT, "quota")])
def test_a_failing_rename_leaves_zoo_and_destination_as_they_were(sandbox, monkeypatch, code, needle) -> None:
    real_rename, real_replace = os.rename, os.replace

    def failing(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "rename", failing)
    monkeypatch.setattr(os, "replace", failing)
    before = tree(sandbox)
    files = sandbox / "files"
    for args in (["import", str(files / "a.safetensors"), "--model", MODEL, "--name", "new"],
                 ["compose", MODEL, "new", "a"], ["merge", MODEL, "a", "b", "--method", "cat", "--out", "new"],
                 ["merge", MODEL, "a", "--into-base", "--out", "fused"],
                 ["export", f"{MODEL}/a", "--format", "peft", "--out", str(sandbox / "out" / "peft")],
                 ["export", f"{MODEL}/a", "--format", "kohya", "--out", str(sandbox / "out.safetensors")],
                 ["export", f"{MODEL}/a", "--format", "merged", "--out", str(files)],
                 ["push", f"{MODEL}/a", "--repo", "me/a", "--dry-run", str(sandbox / "stage")]):
        refused(cli_run(sandbox, *args), needle, "nothing was written")
    monkeypatch.setattr(os, "rename", real_rename)
    monkeypatch.setattr(os, "replace", real_replace)
    untouched(sandbox, before)


# --- file-system faults, for real: a private mount namespace -----------------------------------------------------
def _namespace_prefix() -> list[str] | None:
    for prefix in (["unshare", "-rm"], ["unshare", "-m"]):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=20).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


NAMESPACE = _namespace_prefix()


def _in_namespace(sandbox: Path, mode: str, commands: list[list[str]]) -> list[dict[str, Any]]:
    """Run CLI commands inside a private mount namespace where the zoo (or the `dest` folder) is read-only or
    a full tmpfs; returns, per command, its exit code, stderr, and whether zoo and dest stayed identical."""
    spec = json.dumps({"sandbox": str(sandbox), "mode": mode, "commands": commands})
    result = subprocess.run([*NAMESPACE, sys.executable, __file__, spec], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _namespace_main(spec: dict[str, Any]) -> None:
    """Inside the namespace: mount, snapshot, run each command in-process, snapshot again."""
    sandbox, mode = Path(spec["sandbox"]), spec["mode"]
    dest = sandbox / "dest"
    dest.mkdir(exist_ok=True)
    target = sandbox / "zoo" if mode.endswith("zoo") else dest
    if mode.startswith("full"):
        held = sandbox / "held"
        shutil.move(target, held)
        target.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(target)], check=True)
        for child in held.iterdir():
            (shutil.copytree if child.is_dir() else shutil.copy2)(child, target / child.name)
        with open(target / "filler", "wb", buffering=0) as filler:  # take every free byte
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass
    else:
        subprocess.run(["mount", "--bind", str(target), str(target)], check=True)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
    results = []
    for args in spec["commands"]:
        zoo_before, dest_before = tree(sandbox / "zoo"), tree(dest)
        result = cli_run(sandbox, *args)
        results.append({"args": args, "code": result.exit_code, "stderr": result.stderr,
                        "traceback": "Traceback" in result.output or (
                            result.exception is not None and not isinstance(result.exception, SystemExit)),
                        "zoo_same": tree(sandbox / "zoo") == zoo_before, "dest_same": tree(dest) == dest_before})
    print(json.dumps(results))


def _fs_commands(sandbox: Path, dest: Path) -> list[list[str]]:
    files = sandbox / "files"
    return [["import", str(files / "a.safetensors"), "--model", MODEL, "--name", "new"],
            ["import", str(files / "a-peft"), "--format", "peft", "--model", MODEL, "--name", "new"],
            ["compose", MODEL, "new", "a"],
            ["merge", MODEL, "a", "b", "--method", "cat", "--out", "new"],
            ["merge", MODEL, "a", "--into-base", "--out", "fused"],
            ["train", MODEL, "new", "--steps", "1"],
            ["export", f"{MODEL}/a", "--format", "peft", "--out", str(dest / "peft")],
            ["export", f"{MODEL}/a", "--format", "kohya", "--out", str(dest / "k.safetensors")],
            ["export", f"{MODEL}/a", "--format", "merged", "--out", str(dest)],
            ["export", f"{MODEL}/a", "--out", str(dest / "deeper" / "a.safetensors")],
            ["push", f"{MODEL}/a", "--repo", "me/a", "--dry-run", str(dest / "stage")]]


@pytest.mark.parametrize("mode, needle", [("readonly-zoo", "read-only"), ("readonly-dest", "read-only"),
                                          ("full-zoo", "no space left on device"),
                                          ("full-dest", "no space left on device")])
def test_read_only_and_full_file_systems(sandbox, mode, needle) -> None:
    need("mount-namespace", NAMESPACE is not None)  # without one, the in-process test covers the same paths
    commands = _fs_commands(sandbox, sandbox / "dest")
    zoo_writers = commands[:6]
    failing = zoo_writers if mode.endswith("zoo") else commands[6:]
    results = _in_namespace(sandbox, mode, failing)
    for result in results:
        lines = result["stderr"].strip().splitlines()
        assert result["code"] == 1 and 1 <= len(lines) <= 2 and not result["traceback"], result
        assert needle in result["stderr"] and result["zoo_same"] and result["dest_same"], result


if __name__ == "__main__":  # the namespace runner (see _in_namespace)
    _namespace_main(json.loads(sys.argv[1]))
