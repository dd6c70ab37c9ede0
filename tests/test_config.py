"""Configs are frozen data that round-trip through JSON and refuse nonsense."""

from __future__ import annotations

import json

import pytest

from adapterhub_lite import AdapterConfig, ConfigError, LoraConfig


def test_json_round_trip() -> None:
    config = LoraConfig(targets=["fc*", "re:conv\\d"], target_types=("Linear",), rank=4, alpha=2.5, dropout=0.1,
                        init="gaussian", rslora=True, attention_projections="q,v")
    data = json.loads(json.dumps(config.to_dict()))
    assert data["kind"] == "lora" and data["attention_projections"] == ["q", "v"]
    assert LoraConfig.from_dict(data) == config


def test_unknown_fields_are_errors_unless_asked(tmp_path) -> None:
    data = {**LoraConfig(targets="x").to_dict(), "future": 1}
    with pytest.raises(ConfigError, match=r"unknown LoraConfig field\(s\) \['future'\]"):
        LoraConfig.from_dict(data)
    assert LoraConfig.from_dict(data, ignore_unknown=True) == LoraConfig(targets="x")


def test_wrong_family_and_empty_targets() -> None:
    with pytest.raises(ConfigError, match="for adapter family 'loha', not 'lora'"):
        LoraConfig.from_dict({"kind": "loha", "targets": ["x"]})
    with pytest.raises(ConfigError, match="targets nothing"):
        LoraConfig()
    with pytest.raises(ConfigError, match="targets nothing"):
        AdapterConfig()


def test_replace_validates() -> None:
    config = LoraConfig(targets="x", rank=2)
    assert config.replace(rank=3).rank == 3
    with pytest.raises(ConfigError):
        config.replace(rank=-1)
    with pytest.raises(AttributeError):
        config.rank = 5  # frozen
