"""The one option checker (probe_kit.options): declared types and ranges, text from -o, values from YAML."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import pytest

from probe_kit.errors import UserError
from probe_kit.options import Fraction, PositiveInt, Range, check_fields, check_instance, check_value


@dataclass(frozen=True)
class Inner:
    frames: PositiveInt = 3


@dataclass(frozen=True)
class Opts:
    epochs: PositiveInt = 30
    share: Fraction = 0.3
    gap: Annotated[float, Range(0, 1, max_open=True)] = 0.0
    head: Literal["linear", "mlp"] = "mlp"
    names: tuple[str, ...] = ()
    flag: bool = False
    inner: Inner | None = None
    edge: Annotated[int, Range(min=16)] | None = None

    def __post_init__(self) -> None:
        check_instance(self)


def test_text_is_parsed_by_the_declared_type():
    got = check_fields(
        Opts,
        {"epochs": "5", "share": "0.5", "head": "linear", "names": "a, b", "flag": "yes", "edge": "none"},
        text=True,
    )
    assert got == {"epochs": 5, "share": 0.5, "head": "linear", "names": ("a", "b"), "flag": True, "edge": None}
    assert type(got["epochs"]) is int and type(got["share"]) is float


def test_typed_values_must_already_have_the_type():
    assert check_fields(Opts, {"share": 1 / 2, "names": ["x"], "inner": {"frames": 2}}) == {
        "share": 0.5,
        "names": ("x",),
        "inner": Inner(2),
    }
    assert check_value("k", 1, float) == 1.0 and type(check_value("k", 1, float)) is float  # YAML's `lr: 1`


@pytest.mark.parametrize(
    "values,message",
    [
        ({"epochs": "abc"}, "epochs: expected an integer >= 1, got 'abc'"),
        ({"epochs": 0}, "epochs: expected an integer >= 1, got 0"),
        ({"epochs": True}, "epochs: expected an integer >= 1, got True"),  # a bool is not a count
        ({"epochs": 2.0}, "epochs: expected an integer"),  # from YAML, 2.0 is not an int
        ({"share": 1}, r"share: expected a finite number in \(0, 1\), got 1"),
        ({"share": 0}, r"share: expected a finite number in \(0, 1\)"),
        ({"share": float("nan")}, "share: expected a finite number"),
        ({"share": float("inf")}, "share: expected a finite number"),
        ({"gap": 1.0}, r"gap: expected a finite number in \[0, 1\), got 1.0"),
        ({"head": "conv"}, "head: expected one of 'linear', 'mlp', got 'conv'"),
        ({"names": 3}, "names: expected a list"),
        ({"names": ["a", 2]}, r"names\[1\]: expected a text, got 2"),
        ({"flag": 1}, "flag: expected true or false, got 1"),
        ({"inner": 5}, r"inner: expected a mapping with keys \['frames'\], got 5"),
        ({"inner": {"frames": "eight"}}, "inner.frames: expected an integer >= 1, got 'eight'"),
        ({"inner": {"frams": 1}}, "inner: unknown key 'frams'"),
        ({"edge": 8}, "edge: expected an integer >= 16, got 8"),
        ({"colour": 1}, r"unknown option 'colour'; expected one of \['edge', 'epochs'"),
    ],
)
def test_bad_values_name_the_key_and_what_was_expected(values, message):
    with pytest.raises(UserError, match=message):
        check_fields(Opts, values, prefix="x.yaml: ")


@pytest.mark.parametrize("text", ["abc", "0", "-3", "2.5", ""])
def test_bad_text_is_refused(text):
    with pytest.raises(UserError, match="-o epochs: expected an integer >= 1"):
        check_fields(Opts, {"epochs": text}, prefix="-o ", text=True)


def test_post_init_holds_python_callers_to_the_same_rule():
    assert Opts(names=["a"]).names == ("a",)  # converted to the declared type, even though frozen
    with pytest.raises(UserError, match="epochs: expected an integer >= 1, got 0"):
        Opts(epochs=0)


def test_range_bounds():
    closed, open_ = Range(0, 1), Range(0, 1, min_open=True, max_open=True)
    assert closed.contains(0) and closed.contains(1) and not closed.contains(1.0001)
    assert not open_.contains(0) and not open_.contains(1) and open_.contains(0.5)
    assert str(Range(min=1)) == ">= 1" and str(open_) == "in (0, 1)" and str(Range(max=5, max_open=True)) == "< 5"


def test_settings_files_are_strict_yaml(tmp_path):
    """A duplicate key would silently keep the last value, and a huge file (or alias bomb) would hang the loader:
    both are refused, naming the file (and the line)."""
    from probe_kit.errors import UserError
    from probe_kit.experiment import load_experiment
    from probe_kit.io import MAX_YAML_BYTES, read_yaml

    twice = tmp_path / "exp.yaml"
    twice.write_text("name: a\nseed: 1\nbatch_size: 4\nseed: 2\n")
    with pytest.raises(UserError, match=r"exp\.yaml:4: duplicate key 'seed' \(first on line 2\)"):
        load_experiment(twice)
    nested = tmp_path / "nested.yaml"
    nested.write_text("name: a\nanalyzers:\n  lens: {}\n  lens: {val_fraction: 0.5}\n")
    with pytest.raises(UserError, match=r"nested\.yaml:4: duplicate key 'lens'"):
        load_experiment(nested)
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: a\n" + "# padding\n" * (MAX_YAML_BYTES // 10 + 1))
    with pytest.raises(UserError, match=r"huge\.yaml: \d+ bytes; experiment YAML files are at most"):
        load_experiment(huge)
    (tmp_path / "ok.yaml").write_text("a: [1, 2]\nb: {c: 1}\n")
    assert read_yaml(tmp_path / "ok.yaml") == {"a": [1, 2], "b": {"c": 1}}
