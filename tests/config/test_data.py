"""The ``--source`` spec syntax and the label map's checks (config/data.py)."""

from __future__ import annotations

import pytest

from cxrguide.config import PrepareConfig, from_dict, save_yaml
from cxrguide.config.data import parse_source_spec, read_label_map
from cxrguide.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "kind", "name", "path"),
    [
        ("folder=/d/Kermany", "folder", "", "/d/Kermany"),
        ("FOLDER:kermany=/d/K", "folder", "kermany", "/d/K"),
        ("table:cx.net_2=/d/a=b/labels.csv", "table", "cx.net_2", "/d/a=b/labels.csv"),
        ("ieee8023=C:/data/x", "ieee8023", "", "C:/data/x"),
    ],
)
def test_source_spec_kind_name_path(text, kind, name, path):
    spec = parse_source_spec(text)
    assert (spec.kind, spec.name, spec.path, spec.text) == (kind, name, path, text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("folder", "is not KIND=PATH"),
        ("=/d", "is not KIND=PATH"),
        ("folder=", "is not KIND=PATH"),
        ("folder:=/d", "name '' in 'folder:=/d' must be"),
        ("folder:my set=/d", "name 'my set'"),
        ("table:a/b=/d/x.csv", "name 'a/b'"),
    ],
)
def test_malformed_source_specs_name_themselves(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_source_spec(text)
    with pytest.raises(ConfigError, match=match):
        PrepareConfig(source=[text]).validate()


def test_label_map_file_is_read_checked_and_saved_resolved(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("healthy: Normal\nvirus: null\n'COVID-19 (PCR+)': COVID-19\n")
    cfg = from_dict(PrepareConfig, {"source": ["folder=/x"], "label_map": str(path)})
    assert cfg.label_map == {"healthy": "Normal", "virus": None, "COVID-19 (PCR+)": "COVID-19"}
    save_yaml(cfg, tmp_path / "saved.yaml")  # the map in effect is the config, not the file name
    path.write_text("healthy: Pneumonia\n")
    assert from_dict(PrepareConfig, {"label_map": str(path)}).label_map != cfg.label_map
    assert from_dict(PrepareConfig, {"label_map": {}}).label_map is None


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("healthy: normal\n", r"'healthy' maps to 'normal', not one of Normal, Pneumonia"),
        ("- NORMAL\n", "expected a mapping at the top level"),
        ("1: Normal\n", "label 1 must be non-empty text"),
        ("healthy: [Normal]\n", "maps to \\['Normal'\\]"),
    ],
)
def test_bad_label_map_files_name_file_and_key(tmp_path, content, match):
    path = tmp_path / "map.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        read_label_map(path)


def test_missing_label_map_file_and_inline_mapping_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"label_map: .*nope.yaml not found"):
        from_dict(PrepareConfig, {"label_map": str(tmp_path / "nope.yaml")})
    with pytest.raises(ConfigError, match="'x' maps to 'Covid'"):
        from_dict(PrepareConfig, {"label_map": {"x": "Covid"}})
