"""The spec grammar (property-tested), the registry and composition into a Plan."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from longreach.errors import SpecError
from longreach.spec import (
    REGISTRY,
    Length,
    Method,
    MethodCall,
    Plan,
    build_method,
    format_spec,
    parse_spec,
    register,
)

names = st.from_regex(r"[a-z0-9][a-z0-9-]{0,12}", fullmatch=True).filter(lambda s: s != "none")
keys = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
values = st.from_regex(r"[A-Za-z0-9._/-]{1,10}", fullmatch=True)
calls = st.builds(
    MethodCall,
    names,
    st.dictionaries(keys, values, max_size=4).map(lambda d: tuple(d.items())),
)


@given(st.lists(calls, min_size=1, max_size=4))
def test_parse_format_roundtrip(cs):
    text = format_spec(cs)
    assert parse_spec(text) == cs
    assert format_spec(parse_spec(text)) == text


@given(st.lists(calls, min_size=1, max_size=3))
def test_whitespace_around_separators_is_ignored(cs):
    spaced = " + ".join(
        c.name + (" : " + " , ".join(f"{k} = {v}" for k, v in c.params) if c.params else "") for c in cs
    )
    assert parse_spec(spaced) == cs


@given(st.text(max_size=30))
def test_parser_never_crashes(text):
    try:
        parsed = parse_spec(text)
    except SpecError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(isinstance(c, MethodCall) for c in parsed)


@pytest.mark.parametrize("spec", ["", "none", "  none "])
def test_none_is_empty(spec):
    assert parse_spec(spec) == []


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("yarn+", "stray '+'"),
        ("Yarn", "bad method name"),
        ("yarn:", "no parameters"),
        ("yarn:factor", "key=value"),
        ("yarn:factor=", "key=value"),
        ("yarn:factor=4,factor=5", "given twice"),
        ("yarn:=4", "key=value"),
    ],
)
def test_parse_errors_are_one_line(spec, fragment):
    with pytest.raises(SpecError) as exc:
        parse_spec(spec)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------ registry with test methods
@pytest.fixture
def test_methods():
    @register
    class ScaleRope(Method):
        """A test rope method."""

        name = "t-rope"
        slot = "rope"
        extends = True
        factor: float = 2.0
        target: Length | None = None

        def __post_init__(self):
            if self.factor < 1:
                raise ValueError("factor must be >= 1")

        def reach(self, info):
            return self.target or int(info.window * self.factor)

    @register
    class Unbounded(Method):
        name = "t-reader"
        slot = "reader"
        extends = True

        def reach(self, info):
            return None

    @register
    class OtherRope(Method):
        name = "t-rope2"
        slot = "rope"

    yield
    for n in ("t-rope", "t-reader", "t-rope2"):
        REGISTRY.pop(n, None)


@dataclasses.dataclass
class _Info:
    window: int = 1000


def test_build_method_converts_types(test_methods):
    m = build_method(parse_spec("t-rope:factor=4,target=16k")[0])
    assert m.factor == 4.0 and m.target == 16384
    assert str(m) == "t-rope:factor=4.0,target=16384"


def test_unknown_method_lists_valid(test_methods):
    with pytest.raises(SpecError, match=r"unknown method 'nope'; valid methods: none, .*t-rope"):
        Plan.from_spec("nope")


def test_unknown_parameter_lists_parameters(test_methods):
    with pytest.raises(SpecError, match=r"no parameter 'fctor'; its parameters: factor, target"):
        Plan.from_spec("t-rope:fctor=2")


@pytest.mark.parametrize("spec", ["t-rope:factor=abc", "t-rope:factor=0.5", "t-rope:target=-3"])
def test_invalid_values(test_methods, spec):
    with pytest.raises(SpecError) as exc:
        Plan.from_spec(spec)
    assert "t-rope" in str(exc.value) and "\n" not in str(exc.value)


def test_slot_clash(test_methods):
    with pytest.raises(SpecError, match="both set the rope slot"):
        Plan.from_spec("t-rope+t-rope2")


def test_plan_reach(test_methods):
    info = _Info()
    assert Plan.from_spec("none").reach(info) == 1000
    assert Plan.from_spec("t-rope2").reach(info) == 1000  # does not extend
    assert Plan.from_spec("t-rope:factor=3").reach(info) == 3000
    assert Plan.from_spec("t-reader").reach(info) is None
    assert Plan.from_spec("t-rope:factor=3+t-reader").reach(info) is None  # an unbounded reader wins
    assert Plan.from_spec("t-rope:factor=3+t-reader").spec == "t-rope:factor=3.0+t-reader"


def test_register_rejects_bad_classes():
    class NoName(Method):
        slot = "rope"

    with pytest.raises(ValueError):
        register(NoName)

    class BadSlot(Method):
        name = "t-bad"
        slot = "elsewhere"

    with pytest.raises(ValueError):
        register(BadSlot)
    assert "t-bad" not in REGISTRY
