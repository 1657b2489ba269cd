from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from cxrguide.config import (
    PrepareConfig,
    add_config_flags,
    config_from_args,
    load_config,
    save_yaml,
)
from cxrguide.errors import ConfigError


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, PrepareConfig)
    return parser.parse_args(argv)


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    cfg_file = tmp_path / "p.yaml"
    cfg_file.write_text("size: 128\nseed: 5\nsource: [synthetic=/a]\n")
    args = _parse(["--config", str(cfg_file), "--seed", "9", "--out", "o"])
    cfg = config_from_args(PrepareConfig, args)
    assert (cfg.size, cfg.seed, cfg.out, cfg.source) == (128, 9, Path("o"), ["synthetic=/a"])
    assert cfg.quota == "none"


def test_every_field_has_a_flag():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, PrepareConfig)
    flags = {a.dest for a in parser._actions}

    assert {f.name for f in dataclasses.fields(PrepareConfig)} <= flags


def test_repeatable_flag_collects_list():
    args = _parse(["--source", "rsna=/r", "--source", "figure1=/f"])
    assert config_from_args(PrepareConfig, args).source == ["rsna=/r", "figure1=/f"]


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("size: big\n", "size: expected an integer"),
        ("colour: red\n", "unknown field(s) colour"),
        ("quota: some\n", "quota: 'some' is not one of"),
        ("size: 8\n", "size: must be between"),
        ("- a\n- b\n", "expected a mapping"),
        ("size: [1\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_field(tmp_path, yaml_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(PrepareConfig, path)


def test_missing_config_file_is_a_user_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PrepareConfig, tmp_path / "nope.yaml")


def test_save_and_load_round_trip(tmp_path):
    cfg = PrepareConfig(source=["synthetic=/x"], out=Path("/o"), size=64, quota="paper")
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load_config(PrepareConfig, tmp_path / "c.yaml") == cfg
