"""The one reference grammar: MODEL[/NAME][@vN|@latest][=WEIGHT]."""

from __future__ import annotations

import pytest

from adapterhub_lite import AdapterRef, RefError, parse_ref


@pytest.mark.parametrize("text,expected", [
    ("richboynet", AdapterRef("richboynet")),
    ("richboynet/digit9", AdapterRef("richboynet", "digit9")),
    ("richboynet/digit9@latest", AdapterRef("richboynet", "digit9")),
    ("richboynet/digit9@v3", AdapterRef("richboynet", "digit9", 3)),
    ("mnist-cnn/style_1@v12=0.7", AdapterRef("mnist-cnn", "style_1", 12, 0.7)),
    ("ddpm-unet/inverted=-1", AdapterRef("ddpm-unet", "inverted", None, -1.0)),
    ("m/n=1e-1", AdapterRef("m", "n", None, 0.1)),
])
def test_valid_refs(text: str, expected: AdapterRef) -> None:
    assert parse_ref(text) == expected


def test_str_round_trips() -> None:
    for text in ["m", "m/n", "m/n@v2", "m/n@v2=0.5", "m/n=-1"]:
        assert str(parse_ref(text)) == text


def test_base_refs() -> None:
    assert parse_ref("m").is_base and parse_ref("m/base@v2").is_base and not parse_ref("m/n").is_base


@pytest.mark.parametrize("text,message", [
    ("", "expected MODEL"), ("m/", "expected MODEL"), ("m/n@3", "expected MODEL"), ("m/n@v", "expected MODEL"),
    ("m/n/o", "expected MODEL"), ("m n", "expected MODEL"), ("m/n=abc", "bad weight 'abc'"),
    ("m/n=nan", "must be finite"), ("m/n=inf", "must be finite"), ("m/n@v0", "versions start at v1"),
])
def test_invalid_refs_say_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(RefError, match=message):
        parse_ref(text)
