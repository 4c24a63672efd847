import pytest
from hypothesis import given
from hypothesis import strategies as st

from longreach.units import format_bytes, format_length, parse_bytes, parse_length


@pytest.mark.parametrize("text,value", [("16k", 16384), ("16K", 16384), ("1M", 1 << 20), ("3000", 3000),
                                        ("0.5k", 512), (" 8k ", 8192), (4096, 4096)])
def test_parse_length_examples(text, value):
    assert parse_length(text) == value


@pytest.mark.parametrize("bad", ["", "k", "-5", "0", "1.3", "16kb", "1e3", "sixteen", 0, -1, True])
def test_parse_length_rejects(bad):
    with pytest.raises(ValueError):
        parse_length(bad)


@given(st.integers(min_value=1, max_value=1 << 30))
def test_length_roundtrip(n):
    assert parse_length(format_length(n)) == n


@given(st.integers(min_value=1, max_value=4096), st.sampled_from(["k", "K", "m", "M"]))
def test_length_suffix_is_binary(n, unit):
    assert parse_length(f"{n}{unit}") == n * (1024 if unit.lower() == "k" else 1 << 20)


@pytest.mark.parametrize("text,value", [("4GiB", 4 << 30), ("4G", 4 << 30), ("512M", 512 << 20), ("100", 100),
                                        ("1.5KiB", 1536)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 << 30) == "3.0 GiB"
    assert format_bytes(1536) == "1.5 KiB"
