import pytest
from hypothesis import given
from hypothesis import strategies as st

from longreach.errors import LongreachError
from longreach.units import MAX_LENGTH, check_count, format_bytes, format_length, parse_bytes, parse_length


@pytest.mark.parametrize("text,value", [("16k", 16384), ("16K", 16384), ("1M", 1 << 20), ("3000", 3000),
                                        ("0.5k", 512), (" 8k ", 8192), (4096, 4096)])
def test_parse_length_examples(text, value):
    assert parse_length(text) == value


@pytest.mark.parametrize("bad", ["", "k", "-5", "0", "1.3", "16kb", "1e3", "sixteen", 0, -1, True])
def test_parse_length_rejects(bad):
    with pytest.raises(ValueError):
        parse_length(bad)


@given(st.integers(min_value=1, max_value=MAX_LENGTH))
def test_length_roundtrip(n):
    assert parse_length(format_length(n)) == n


@given(st.integers(min_value=1, max_value=16), st.sampled_from(["k", "K", "m", "M"]))
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


@pytest.mark.parametrize("bad,fragment", [
    ("1" * 400, "more than 16M tokens"),  # exact parsing: no float overflow to inf
    ("17M", "more than 16M tokens"), (MAX_LENGTH + 1, "more than 16M"), ("1.3", "whole number"),
    ("\u0663", "not a length"),  # ASCII digits only (int() would read Arabic-Indic digits)
    (None, "not a length"), (2.5, "not a length"), ("x" * 5000, "not a length"),
])
def test_parse_length_bounds_are_one_line_errors(bad, fragment):
    with pytest.raises(LongreachError, match=fragment) as err:
        parse_length(bad)
    assert isinstance(err.value, ValueError) and len(str(err.value).splitlines()) == 1 and len(str(err.value)) < 200


def test_length_limit_is_exact():
    assert parse_length("16M") == parse_length(MAX_LENGTH) == MAX_LENGTH
    assert parse_length("0.0009765625M") == 1024  # a fraction of a unit that is whole in tokens


@pytest.mark.parametrize("bad,fragment", [("abc", "not a memory size"), ("0", "at least 1 byte"), (0, "at least 1"),
                                         (-5, "at least 1"), ("1" * 400 + "G", "more than 1 PiB"),
                                         ("2048T", "more than 1 PiB"), (True, "not a memory size"),
                                         ("1e9", "not a memory size")])
def test_parse_bytes_rejects(bad, fragment):
    with pytest.raises(LongreachError, match=fragment):
        parse_bytes(bad)


def test_check_count_names_the_option_and_bounds():
    assert check_count(5, "--x") == 5
    for bad in (0, -1, MAX_LENGTH + 1, True, "5", 1.0):
        with pytest.raises(LongreachError, match=r"--x must be .*between 1 and 16,777,216"):
            check_count(bad, "--x")
