"""The zoo on disk: versions, refs, atomic and locked writes, damaged entries."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapterhub_lite import RefError, UnknownNameError, WriteError, ZooError
from adapterhub_lite.zoo import Zoo


BASE_CARD = {"kind": "base", "fingerprint": "0" * 64}
ADAPTER_CARD = {"kind": "adapter", "base": {"ref": "net/base@v1", "fingerprint": "0" * 64}}


def _write(text: str, file: str = "model.safetensors"):
    def write(folder: Path) -> None:
        (folder / file).write_text(text)
    return write


def test_versions_refs_and_latest(tmp_path) -> None:
    zoo = Zoo(tmp_path)
    assert zoo.models() == [] and list(zoo.entries()) == []
    for i in range(3):
        entry = zoo.add_version("net", "base", _write(str(i)), {**BASE_CARD, "n": i})
        assert entry.version == i + 1 and entry.ref == f"net/base@v{i + 1}"
    assert zoo.versions("net", "base") == [1, 2, 3]
    assert zoo.resolve("net").version == 3
    assert zoo.resolve("net/base@latest").card["n"] == 2
    assert zoo.resolve("net/base@v1").card["n"] == 0
    card = zoo.resolve("net@v2").card
    assert card["files"] == {"model.safetensors": 1} and card["model"] == "net" and "created" in card
    with pytest.raises(RefError, match="net/base has no v7; versions: v1, v2, v3"):
        zoo.resolve("net@v7")
    with pytest.raises(UnknownNameError, match="unknown zoo model 'nte'; did you mean 'net'"):
        zoo.resolve("nte")
    with pytest.raises(UnknownNameError, match="unknown net entry 'bsae'; did you mean 'base'"):
        zoo.resolve("net/bsae")


def test_env_and_default_root(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ADAPTERS_ZOO", str(tmp_path / "env"))
    assert Zoo().root == tmp_path / "env"
    assert Zoo(tmp_path / "flag").root == tmp_path / "flag"
    monkeypatch.delenv("ADAPTERS_ZOO")
    assert Zoo().root == Path("zoo")


def test_failed_write_leaves_nothing(tmp_path) -> None:
    zoo = Zoo(tmp_path)
    zoo.add_version("net", "a", _write("x", "adapter.safetensors"), ADAPTER_CARD)

    def broken(folder: Path) -> None:
        (folder / "adapter.safetensors").write_text("half")
        raise OSError("disk full")

    with pytest.raises(WriteError, match="cannot write net/a into the zoo at .*: disk full; nothing was written"):
        zoo.add_version("net", "a", broken, ADAPTER_CARD)
    assert zoo.versions("net", "a") == [1]
    assert sorted(p.name for p in (tmp_path / "net" / "a").iterdir()) == ["v1"]


def test_killed_writer_leaves_no_visible_version_and_is_cleaned_up(tmp_path) -> None:
    script = (
        "import sys, time\n"
        "from adapterhub_lite.zoo import Zoo\n"
        "def write(folder):\n"
        "    (folder / 'adapter.safetensors').write_text('partial')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        f"Zoo({str(tmp_path)!r}).add_version('net', 'a', write, {ADAPTER_CARD!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    zoo = Zoo(tmp_path)
    assert zoo.versions("net", "a") == [] and zoo.names("net") == [] and list(zoo.entries()) == []
    assert len(list((tmp_path / "net" / "a").glob(".tmp-*"))) == 1
    zoo.add_version("net", "a", _write("ok", "adapter.safetensors"), ADAPTER_CARD)
    assert zoo.versions("net", "a") == [1]
    assert list((tmp_path / "net" / "a").glob(".tmp-*")) == []


def _writer(root: str, count: int) -> None:
    zoo = Zoo(root)
    for i in range(count):
        zoo.add_version("net", "a", _write(f"{os.getpid()}-{i}", "adapter.safetensors"), {**ADAPTER_CARD, "pid": os.getpid()})
        time.sleep(0.001)


def test_concurrent_writers_never_share_a_version(tmp_path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 8)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    zoo = Zoo(tmp_path)
    assert zoo.versions("net", "a") == list(range(1, 25))
    contents = {e.weights.read_text() for e in zoo.entries("net")}
    assert len(contents) == 24  # every write landed in its own version


def test_damaged_entries_are_clear_errors(tmp_path) -> None:
    zoo = Zoo(tmp_path)
    entry = zoo.add_version("net", "base", _write("x"), BASE_CARD)
    (entry.path / "card.json").write_text("{not json")
    with pytest.raises(ZooError, match="card.json is not valid JSON.*restore or delete"):
        zoo.resolve("net")
    (entry.path / "card.json").unlink()
    with pytest.raises(ZooError, match="has no card.json"):
        zoo.resolve("net")
    (entry.path / "card.json").write_text(json.dumps({
        **BASE_CARD, "model": "net", "name": "base", "version": 1, "created": "now", "files": {}}))
    entry.weights.unlink()
    with pytest.raises(ZooError, match="has no model.safetensors"):
        zoo.resolve("net")


def test_a_folder_another_writer_makes_between_our_check_and_our_mkdir_is_used(tmp_path, monkeypatch) -> None:
    """The race behind concurrent writers: the folder appears after lstat said it was missing."""
    from adapterhub_lite import atomic

    target = tmp_path / "net"
    real_lstat = atomic.os.lstat
    raced = []

    def lstat(path, *args, **kwargs):
        if Path(path) == target and not raced:
            raced.append(path)
            os.mkdir(target)  # the other writer, right after our check
            raise FileNotFoundError(path)
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "lstat", lstat)
    folder, made = atomic.make_dirs_under(tmp_path, "net", "a")
    assert raced and folder == target / "a" and made == [target / "a"]  # not ours to take back on failure


# --- publishing a version, step by step (issue 31, item 6) ---------------------------------------------------
# add_version's steps, in order: the payload (the caller's write), the card, flushing the folder, the rename
# that publishes it, flushing the parent folder. Each is hooked by the function that does it, not by position,
# so a reordering (the card written after the rename, say) meets the failure or the kill in its new place.
PUBLISH_STEPS = ["payload", "card", "flush", "rename", "folder flush"]


def _at_step(monkeypatch, step: str, action) -> None:
    """Call `action()` just before `step` of add_version (the payload: inside the caller's write)."""
    from adapterhub_lite.zoo import store

    def before(name: str, real):
        def hooked(*args, **kwargs):
            action()
            return real(*args, **kwargs)
        return hooked

    if step == "card":
        monkeypatch.setattr(store, "_write_text", before(step, store._write_text))
    elif step == "flush":
        monkeypatch.setattr(store, "fsync_tree", before(step, store.fsync_tree))
    elif step == "folder flush":
        monkeypatch.setattr(store, "fsync_dir", before(step, store.fsync_dir))
    elif step == "rename":
        real_rename = os.rename

        def rename(src, dst, *args, **kwargs):
            if Path(dst).name.startswith("v"):
                action()
            return real_rename(src, dst, *args, **kwargs)
        monkeypatch.setattr(store.os, "rename", rename)


def _payload(action=lambda: None):
    def write(folder: Path) -> None:
        (folder / "adapter.safetensors").write_text("payload")
        action()
    return write


def _every_version_has_its_complete_card(zoo: Zoo) -> None:
    from adapterhub_lite.zoo import ZooEntry

    found = list(zoo.scan())
    assert all(isinstance(f, ZooEntry) for f in found), [getattr(f, "problem", f) for f in found]
    for entry in found:
        assert entry.card["files"] == {"adapter.safetensors": len("payload")}


@pytest.mark.parametrize("step", PUBLISH_STEPS[:-1])
def test_a_failure_at_any_step_before_publishing_leaves_the_zoo_as_it_was(tmp_path, monkeypatch, step) -> None:
    zoo = Zoo(tmp_path)
    zoo.add_version("net", "a", _payload(), ADAPTER_CARD)

    def fail() -> None:
        raise OSError(28, "No space left on device")

    _at_step(monkeypatch, step, fail)
    with pytest.raises(WriteError, match="no space left on device.*nothing was written"):
        zoo.add_version("net", "a", _payload(fail if step == "payload" else lambda: None), ADAPTER_CARD)
    monkeypatch.undo()
    assert zoo.versions("net", "a") == [1]
    assert sorted(p.name for p in (tmp_path / "net" / "a").iterdir()) == ["v1"]  # no temp folder left
    _every_version_has_its_complete_card(zoo)
    assert zoo.add_version("net", "a", _payload(), ADAPTER_CARD).version == 2


def test_a_failure_to_flush_the_folder_after_publishing_does_not_claim_nothing_was_written(tmp_path,
                                                                                           monkeypatch) -> None:
    """Once the rename has published the version, it is there with its card: the command must not say that
    nothing was written; it says what happened, as a warning."""
    from adapterhub_lite import AdapterhubWarning

    zoo = Zoo(tmp_path)

    def fail() -> None:
        raise OSError(5, "Input/output error")

    _at_step(monkeypatch, "folder flush", fail)
    with pytest.warns(AdapterhubWarning, match="net/a@v1 is written, but flushing its folder failed"):
        entry = zoo.add_version("net", "a", _payload(), ADAPTER_CARD)
    monkeypatch.undo()
    assert entry.version == 1 and zoo.versions("net", "a") == [1]
    _every_version_has_its_complete_card(zoo)


KILL_WINDOWS = ["payload", "card", "flush", "rename", "folder flush", "published"]


@pytest.mark.parametrize("window", KILL_WINDOWS)
def test_kill_9_in_any_window_leaves_no_version_without_its_complete_card(tmp_path, window) -> None:
    """A writer killed just before each step (and just after the last): what is visible is either nothing new
    or a complete version with its card; the next write removes the killed one's temp folder."""
    script = f"""
import os, sys, time
from pathlib import Path
from adapterhub_lite.zoo import Zoo, store

def pause(step):
    if step == {window!r}:
        print("paused", flush=True)
        time.sleep(120)

def before(step, real):
    def hooked(*args, **kwargs):
        pause(step)
        return real(*args, **kwargs)
    return hooked

store._write_text = before("card", store._write_text)
store.fsync_tree = before("flush", store.fsync_tree)
store.fsync_dir = before("folder flush", store.fsync_dir)
real_rename = os.rename
def rename(src, dst, *args, **kwargs):
    if Path(dst).name.startswith("v"):
        pause("rename")
    return real_rename(src, dst, *args, **kwargs)
os.rename = rename

def write(folder):
    (folder / "adapter.safetensors").write_text("payload")
    pause("payload")

Zoo({str(tmp_path)!r}).add_version("net", "a", write, {ADAPTER_CARD!r})
pause("published")
"""
    Zoo(tmp_path).add_version("net", "a", _payload(), ADAPTER_CARD)  # v1 was there before
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "paused"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    zoo = Zoo(tmp_path)
    _every_version_has_its_complete_card(zoo)
    published = window in ("folder flush", "published")
    assert zoo.versions("net", "a") == ([1, 2] if published else [1])
    assert zoo.add_version("net", "a", _payload(), ADAPTER_CARD).version == (3 if published else 2)
    assert list((tmp_path / "net" / "a").glob(".tmp-*")) == []  # the killed writer's temp folder is gone
    _every_version_has_its_complete_card(zoo)
