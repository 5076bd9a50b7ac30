"""The validator against an independent expectation: small classes defined here, whose keys
and types are written out by hand below."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict

import pytest
from omegaconf import OmegaConf

from ptft.config.validate import signature, validate, with_defaults
from ptft.errors import ConfigError

HERE = __name__


class Options(TypedDict, total=False):
    k: int
    temperature: float | None


class Base:
    def __init__(
        self,
        width: int,
        rate: float = 0.1,
        name: str | None = None,
        sizes: Sequence[int] = (1, 2),
        flag: bool = False,
    ) -> None:
        pass


class Child(Base):
    """Forwards ``**kwargs`` to its base: the base's arguments are its keys too."""

    def __init__(
        self, mode: Literal["a", "b"] = "a", options: Options | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)


class Holder:
    def __init__(self, part: Mapping[str, Any], table: dict[str, int] | None = None) -> None:
        pass


def make(size: int, scale: float = 1.0) -> None:
    """A function target (as the schedules are)."""


CHILD_KEYS = "flag, mode, name, options, rate, sizes, width"


def child(**values: Any) -> dict[str, Any]:
    return {"thing": {"_target_": f"{HERE}.Child", "width": 4, **values}}


def refused(cfg: Any) -> str:
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_keys_come_from_the_signature_and_the_bases_it_forwards_to():
    assert sorted(signature(Child).params) == CHILD_KEYS.split(", ")
    assert not signature(Child).open
    assert sorted(signature(make).params) == ["scale", "size"]


def test_a_node_that_fits_passes():
    validate(
        child(
            rate=1,
            name=None,
            sizes=[3, 4],
            flag=True,
            mode="b",
            options={"k": 5, "temperature": None},
        )
    )
    validate({"f": {"_target_": f"{HERE}.make", "size": 2, "scale": 3}})


def test_an_unknown_key_is_named_with_the_valid_keys():
    assert (
        refused(child(widht=3))
        == f"thing.widht: {HERE}.Child takes no such argument; valid keys: {CHILD_KEYS}"
    )


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("width", 1.5, "thing.width=1.5: expected int, got float"),
        ("width", True, "thing.width=True: expected int, got bool"),  # a bool is not an int
        ("rate", "fast", "thing.rate=fast: expected float, got str"),
        ("name", 3, "thing.name=3: expected str | None, got int"),
        ("sizes", [1, "x"], "thing.sizes=[1, 'x']: expected Sequence[int], got list"),
        ("sizes", "12", "thing.sizes=12: expected Sequence[int], got str"),
        ("flag", 1, "thing.flag=1: expected bool, got int"),
        ("mode", "c", "thing.mode=c: expected 'a' | 'b', got str"),
        ("options", [1], "thing.options=[1]: expected a mapping | None, got list"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_with_the_type(key, value, message):
    assert refused(child(**{key: value})) == message


def test_typeddict_keys_and_values_are_checked():
    assert (
        refused(child(options={"kk": 1}))
        == "thing.options.kk: not a key of thing.options; valid keys: k, temperature"
    )
    assert refused(child(options={"k": "x"})) == "thing.options.k=x: expected int, got str"


def test_nested_target_nodes_are_checked_with_their_dotted_key():
    cfg = {
        "holder": {"_target_": f"{HERE}.Holder", "part": {"_target_": f"{HERE}.Base", "widht": 1}}
    }
    assert refused(cfg).startswith(f"holder.part.widht: {HERE}.Base takes no such argument")
    assert refused(
        {"holder": {"_target_": f"{HERE}.Holder", "part": {}, "table": {"a": "b"}}}
    ).startswith("holder.table={'a': 'b'}: expected dict[str, int]")


def test_values_unknown_before_the_run_are_not_checked_and_missing_ones_are_named():
    cfg = OmegaConf.create(child(name="${hydra:runtime.output_dir}"))
    validate(cfg)  # resolves only once Hydra runs the job
    assert (
        refused(OmegaConf.create(child(name="???")))
        == "thing.name has no value (???): set it, e.g. thing.name=..."
    )


def test_a_library_class_that_passes_kwargs_on_is_open_and_one_that_does_not_is_not():
    validate(
        {
            "logger": {
                "_target_": "lightning.pytorch.loggers.TensorBoardLogger",
                "save_dir": ".",
                "flush_secs": 5,
            }
        }
    )
    message = refused(
        {"logger": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": ".", "flush": 5}}
    )
    assert message.startswith(
        "logger.flush: lightning.pytorch.loggers.CSVLogger takes no such argument; valid keys:"
    )


def test_a_target_that_does_not_import_is_named():
    assert refused({"model": {"_target_": "ptft.nowhere.Model"}}).startswith(
        "model._target_=ptft.nowhere.Model:"
    )


def test_with_defaults_fills_in_what_the_config_leaves_to_the_code():
    completed = with_defaults({"_target_": f"{HERE}.Base", "width": 3, "rate": 0.5})
    assert list(completed)[0] == "_target_"
    assert completed == {
        "_target_": f"{HERE}.Base",
        "width": 3,
        "rate": 0.5,
        "name": None,
        "sizes": [1, 2],
        "flag": False,
    }
