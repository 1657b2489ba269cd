"""The label map of folder/table sources: the documented default and the user's map over it."""

from __future__ import annotations

import pytest

from cxrguide.data.sources.labelmap import DEFAULT_LABEL_MAP, LabelMap, label_key
from cxrguide.errors import ConfigError

DOCUMENTED = {  # the list, as docs/sources.md states it
    "Normal": ["NORMAL", "Normal", "normal", "No_findings", "No Finding"],
    "Pneumonia": ["PNEUMONIA", "Pneumonia", "bacteria", "virus", "Viral Pneumonia"],
    "COVID-19": ["COVID-19", "COVID", "covid", "COVID19"],
}


def test_default_map_is_the_documented_one():
    labels = LabelMap()
    for cls, raws in DOCUMENTED.items():
        for raw in raws:
            assert labels.lookup(raw) == cls, raw
    assert sorted(DEFAULT_LABEL_MAP) == sorted(r for raws in DOCUMENTED.values() for r in raws)
    assert labels.lookup(" no_FINDINGS ") == "Normal"  # case, spaces and '_' ignored
    for raw in ("Lung_Opacity", "Tuberculosis", "COVID 19 suspected", ""):
        assert labels.lookup(raw) is None


def test_user_map_adds_changes_and_removes_over_the_default():
    labels = LabelMap({"Lung_Opacity": "Pneumonia", "virus": None, "bacteria": "COVID-19"})
    assert labels.lookup("lung opacity") == "Pneumonia"
    assert labels.lookup("virus") is None
    assert labels.lookup("bacteria") == "COVID-19"
    assert labels.lookup("NORMAL") == "Normal"  # untouched defaults stay
    assert labels.why_not("VIRUS") == "label 'VIRUS' excluded by the label map (null)"
    assert labels.why_not("TB") == "unmapped label 'TB' (not in the label map; see --label-map)"
    assert labels.why_not("  ") == "blank label"
    assert "lung opacity" in labels.known() and "virus" not in labels.known()


def test_two_spellings_of_one_label_to_different_classes_are_refused():
    with pytest.raises(ConfigError, match="'Viral_PN' -> 'Pneumonia' and 'viral pn' -> 'COVID-19'"):
        LabelMap({"Viral_PN": "Pneumonia", "viral pn": "COVID-19"})
    assert LabelMap({"Viral_PN": "Pneumonia", "viral pn": "Pneumonia"}).lookup("VIRAL_pn")
    assert label_key("No_findings") == "no findings"
