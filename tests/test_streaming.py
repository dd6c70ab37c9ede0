"""Out-of-core fusing writes a valid safetensors file equal to the in-memory fuse."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapterhub_lite import AdapterFileError
from adapterhub_lite.zoo.streaming import fuse_file
from adapterhub_lite.tensorfile import read_header


def test_streamed_fuse_equals_the_in_memory_fuse(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    state = {"a.weight": torch.randn(12, 8, generator=gen), "a.bias": torch.randn(12, generator=gen),
             "conv.weight": torch.randn(6, 3, 3, 3, generator=gen),
             "half.weight": torch.randn(5, 4, generator=gen).to(torch.bfloat16),
             "steps": torch.tensor(7, dtype=torch.int64)}
    save_file(state, str(tmp_path / "base.safetensors"), metadata={"note": "kept"})
    terms = {"a.weight": [(torch.randn(12, 2, generator=gen), torch.randn(2, 8, generator=gen), 0.5),
                          (torch.randn(12, 1, generator=gen), torch.randn(1, 8, generator=gen), -2.0)],
             "conv.weight": [(torch.randn(6, 2, generator=gen), torch.randn(2, 3, 3, 3, generator=gen), 1.0)],
             "half.weight": [(torch.randn(5, 1, generator=gen), torch.randn(1, 4, generator=gen), 1.0)]}
    report = fuse_file(tmp_path / "base.safetensors", tmp_path / "fused.safetensors", terms, {"fused": "yes"})
    assert report["tensors"] == 5 and report["fused"] == 3
    fused = load_file(str(tmp_path / "fused.safetensors"))
    for name, tensor in state.items():
        want = tensor.float().clone()
        for b, a, m in terms.get(name, []):
            want += (m * b @ a.reshape(a.shape[0], -1)).view(want.shape)
        assert fused[name].dtype == tensor.dtype and fused[name].shape == tensor.shape
        torch.testing.assert_close(fused[name].float(), want.to(tensor.dtype).float(), rtol=1e-5, atol=1e-5)
    assert torch.equal(fused["a.bias"], state["a.bias"]) and torch.equal(fused["steps"], state["steps"])
    assert read_header(tmp_path / "fused.safetensors").metadata == {"note": "kept", "fused": "yes"}


def test_errors_leave_no_output(tmp_path) -> None:
    save_file({"w": torch.ones(4, 4)}, str(tmp_path / "base.safetensors"))
    with pytest.raises(AdapterFileError, match="has no tensor 'x'"):
        fuse_file(tmp_path / "base.safetensors", tmp_path / "out.safetensors", {"x": []})
    data = (tmp_path / "base.safetensors").read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:-8])
    with pytest.raises(AdapterFileError, match="truncated"):
        fuse_file(tmp_path / "short.safetensors", tmp_path / "out.safetensors", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "short.safetensors"]
