"""The method registry: lazy modules, options coerced from the config's type hints, constraints declared
once per config class and inherited."""

from __future__ import annotations

import dataclasses

import pytest

from onnxprune.errors import ConfigError
from onnxprune.methods import METHODS, get_method, make_config
from onnxprune.methods.base import coerce


def test_cli_strings_become_the_declared_types():
    config = make_config(get_method("l1-channel"), group="2", round_to="8", sparsity="0.25")
    assert config.group == 2 and isinstance(config.group, int)
    assert config.round_to == 8 and config.sparsity == 0.25
    assert make_config(get_method("l1-channel"), group="none").group is None
    assert make_config(get_method("magnitude"), skip_first="yes").skip_first is True
    assert coerce("x", "a, b", tuple[str, ...]) == ("a", "b")
    with pytest.raises(ConfigError, match="option 'round_to': 'eight' is not a valid int"):
        make_config(get_method("l1-channel"), round_to="eight")
    with pytest.raises(ConfigError, match="option 'skip_first': 'maybe' is not a valid bool"):
        make_config(get_method("magnitude"), skip_first="maybe")


def test_constraints_are_inherited_and_checked_on_every_config():
    intrafusion = get_method("intrafusion").config_cls
    with pytest.raises(ConfigError, match=r"round_to must be >= 1, not 0"):
        intrafusion(round_to=0)  # declared on the channel config, checked on its subclass
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\), not 1.5"):
        intrafusion(sparsity=1.5)
    with pytest.raises(ConfigError, match="seed must be >= 0"):
        get_method("magnitude").config_cls(seed=-1)
    with pytest.raises(ConfigError, match="allocation must be one of global, uniform"):
        make_config(get_method("magnitude"), allocation="layer")


def test_every_registered_method_has_a_config_and_a_session_factory():
    for spec in METHODS.values():
        config = spec.config_cls()
        assert dataclasses.is_dataclass(config) and 0 <= config.sparsity < 1, spec.name
        assert callable(getattr(__import__(spec.module, fromlist=["_"]), spec.session)), spec.name
    with pytest.raises(ConfigError, match="unknown method 'obs'; available: magnitude"):
        get_method("obs")
