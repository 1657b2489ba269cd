"""bench/_common.py: the spread figures, the round-robin order and the one JSON line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _common  # noqa: E402


def test_spread_quartiles_and_extremes():
    s = _common.spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]) == (3, 2, 4, 1, 5, 5)
    assert _common.spread([7.0])["q1"] == 7.0


def test_interleave_rotates_the_order_and_skips_warmup():
    calls: list[str] = []
    variants = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = _common.interleave(variants, repeats=3, warmup=1)
    assert calls == list("abcbcacababc")  # no variant always first
    assert all(len(v) == 3 for v in times.values())


def test_emit_prints_one_json_line_with_the_load(capsys):
    _common.emit("demo", {"speedup": 1.23456789, "nested": {"x": 0.000123456}}, _common.load())
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    line = json.loads(out[0])
    assert line["bench"] == "demo" and line["speedup"] == 1.235
    assert line["nested"]["x"] == 0.0001235 and line["load_after"]["cpus"] >= 1
