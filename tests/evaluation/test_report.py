"""The HTML report: contents parsed from the file, then rendered in a real headless Chromium."""

from __future__ import annotations

import base64
import importlib.metadata
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from PIL import Image

from cxrguide.core.runs import RunInfo
from cxrguide.data.audit import audit_prepared
from cxrguide.errors import CxrGuideError
from cxrguide.evaluation.galleries import explain_run
from cxrguide.evaluation.report import build_report
from cxrguide.evaluation.report_results import shortcut_split_table
from cxrguide.evaluation.report_runs import RunRecord, find_runs, provenance_table
from cxrguide.evaluation.report_table import pct
from cxrguide.evaluation.sources_summary import write_study
from cxrguide.training.tune import plot_history
from explain_helpers import tiny_runs

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class Page(HTMLParser):
    """Tables (id -> rows of cell texts), every src/href, and the page's text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[str] = []
        self.images = 0
        self.text: list[str] = []
        self._table: str | None = None
        self._body = False
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v is not None]
        self.images += tag == "img"
        if tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._body = True
        elif tag == "tr" and self._body:
            self.tables[self._table].append([])
        elif tag == "td" and self._body:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._body = False

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tiny_runs(tmp_path_factory.getbasetemp() / "explain-runs")


@pytest.fixture(scope="module")
def extras(tmp_path_factory) -> dict[str, Path]:
    """A shortcut table as `bench shortcut` writes it and a tuning folder with Optuna plots."""

    root = tmp_path_factory.mktemp("extras")
    rows = pd.DataFrame(
        {
            "variant": ["stage2", "stage2", "gate"],
            "test_accuracy": [0.9, 0.8, 0.85],
            "shortcut_accuracy": [0.1, 0.2, 0.6],
            "follows_marker": [0.9, 0.8, 0.3],
            "lung_energy": [0.3, 0.4, 0.8],
            "lung_pointing": [0.2, 0.3, 0.9],
            "marker_energy": [0.5, 0.4, 0.1],
            "lesion_energy": [0.1, 0.1, 0.2],
            "minutes": [1.0, 1.2, 2.0],
        }
    )
    rows.to_csv(root / "shortcut_runs.csv", index=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", study_name="tiny", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.optimize(lambda t: -((t.suggest_float("lr", 0, 1) - 0.3) ** 2), n_trials=4)
    (root / "tune").mkdir()
    plot_history(study, root / "tune/optimization_history.png")
    return {"shortcut": root / "shortcut_runs.csv", "tune": root / "tune"}


@pytest.fixture(scope="module")
def report(runs, extras, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    return build_report(
        [runs["stage1"].parent], out, shortcut=extras["shortcut"], tune=extras["tune"], device="cpu"
    )


def test_find_runs_takes_run_folders_and_folders_of_runs(runs, tmp_path):
    parent = runs["stage1"].parent
    found = find_runs([parent, runs["stage2"]])
    assert found == [runs[k].resolve() for k in ("stage1", "stage2", "stage3")]
    with pytest.raises(CxrGuideError, match="no such run folder"):
        find_runs([tmp_path / "missing"])
    with pytest.raises(CxrGuideError, match="no run folder"):
        find_runs([tmp_path])


def test_report_holds_the_studys_tables_and_only_embedded_figures(report, runs):
    html = report.read_text()
    page = Page(html)
    assert all(link.startswith(("data:image/png;base64,", "#")) for link in page.links)
    assert "http://" not in html and "https://" not in html
    t = page.tables
    # Table 3: 2 sites x 3 classes + total; 24 / 6 / 6 images
    assert len(t["data-0"]) == 7 and t["data-0"][-1] == ["all", "all", "24", "6", "6", "36"]
    assert t["models"] == [
        ["MobileNet V2", "64x64", "2x2x1280", "2.40", "2.43", "0.025", "7x7x1280", "2.6"]
    ]
    for stage in (1, 2, 3):
        run = runs[f"stage{stage}"]
        metrics = json.loads((run / "metrics_test.json").read_text())
        (row,) = t[f"leaderboard-stage{stage}"]
        assert row[1] == run.name and row[3] == "random"
        lo, hi = metrics["ci95"]["accuracy"]
        assert row[5] == f"{pct(metrics['accuracy'])} [{pct(lo)}, {pct(hi)}]"
        assert row[8] == pct(metrics["attention"]["lungs"]["energy"].get("mean"))
        assert [r[1] for r in t[f"per-class-stage{stage}"]] == ["Normal", "Pneumonia", "COVID-19"]
        assert [r[1] for r in t[f"per-source-stage{stage}"]] == ["site0", "site1"]
    assert [r[0] for r in t["shortcut"]] == ["stage2", "gate"]
    assert [r[:5] for r in t["provenance"]] == [
        [runs[f"stage{k}"].name, str(k), "mobilenet_v2", "random", "0"] for k in (1, 2, 3)
    ]
    text = " ".join(" ".join(page.text).split())
    assert "Randomly initialised backbones." in text
    for dist in ("torch", "timm"):
        assert f"{dist} {importlib.metadata.version(dist)}" in text
    # figures: 3 run panels + 3 galleries + the stage comparison + 1 tuning plot + 3
    # reliability diagrams (one per run, from its reliability_test.png)
    assert page.images == 11
    for stage in (1, 2, 3):
        assert f"reliability-stage{stage}" in t
    for src in (link for link in page.links if link.startswith("data:image")):
        png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert png.size[0] > 300 and np.asarray(png.convert("L")).std() > 10


def test_report_embeds_an_explain_folder_instead_of_drawing(runs, tmp_path):
    explain_run(runs["stage2"], tmp_path / "figs", ["synthetic:images/Normal-10.png"], device="cpu")
    out = build_report([runs["stage2"]], tmp_path / "r.html", explain_dir=tmp_path / "figs")
    page = Page(out.read_text())
    assert page.images == 3  # the run's panels, the one explain figure, its reliability diagram
    assert "Stage II mobilenet_v2: chosen images" in " ".join(page.text)
    with pytest.raises(CxrGuideError, match="explain folder not found"):
        build_report([runs["stage2"]], tmp_path / "r.html", explain_dir=tmp_path / "nope")
    with pytest.raises(CxrGuideError, match="shortcut benchmark file not found"):
        build_report(
            [runs["stage2"]],
            tmp_path / "r.html",
            explain_dir=tmp_path / "figs",
            shortcut=tmp_path / "none_runs.csv",
        )


def _sources_study(folder: Path) -> Path:
    """A `bench sources` folder: two variants, two held-out sources, one skipped."""

    def variant(internal: list[float], external: list[float], probe: float) -> dict:
        per = [
            {
                "source": s,
                "n": n,
                "internal_accuracy": i,
                "external_accuracy": e,
                "external_ece": 0.2,
                "ood_auroc": None,
            }
            for s, n, i, e in zip(("A", "B"), (19, 20), internal, external, strict=True)
        ]
        return {
            "per_source": per,
            "mean_internal": float(np.mean(internal)),
            "mean_external": float(np.mean(external)),
            "source_probe_accuracy": probe,
            "source_probe_majority": 0.5,
            "worst_group_accuracy": 0.25,
        }

    study = {
        "variants": {
            "stage2": variant([0.9, 0.8], [0.4, 0.5], 0.95),
            "stage2-adv": variant([0.85, 0.8], [0.5, 0.55], 0.7),
        },
        "skipped": [{"source": "C", "n": 3, "reason": "3 films, fewer than --min-films 50"}],
        "timing": {"wall": 60.0},
        "backbone": "efficientnet_lite0",
        "weights": "imagenet",
        "size": 128,
        "seeds": [0],
        "protocol": "Leave one source out.",
    }
    folder.mkdir()
    write_study(folder, study, pd.DataFrame())
    return folder


def test_report_has_the_cross_source_study_when_given(runs, tmp_path):
    study = _sources_study(tmp_path / "sources")
    (tmp_path / "figs").mkdir()
    out = build_report(
        [runs["stage2"]], tmp_path / "r.html", explain_dir=tmp_path / "figs", sources=study
    )
    html = out.read_text()
    page = Page(html)
    assert page.tables["sources"] == [
        ["stage2", "85.0", "45.0", "-40.0", "95.0 (50.0)", "25.0", "20.0", "n/a"],
        ["stage2-adv", "82.5", "52.5", "-30.0", "70.0 (50.0)", "25.0", "20.0", "n/a"],
    ]
    assert page.tables["sources-per-source"] == [
        ["A", "19", "90.0 -> 40.0", "85.0 -> 50.0"],
        ["B", "20", "80.0 -> 50.0", "80.0 -> 55.0"],
    ]
    assert 'href="#sources-section"' in html and "Skipped C (3 films)" in " ".join(page.text)
    embedded = base64.b64encode((study / "sources.png").read_bytes()).decode("ascii")
    assert f"data:image/png;base64,{embedded}" in page.links
    # the sources.json file works as well as its folder; a folder without one fails in a line
    again = build_report(
        [runs["stage2"]],
        tmp_path / "r2.html",
        explain_dir=tmp_path / "figs",
        sources=study / "sources.json",
    )
    assert Page(again.read_text()).tables["sources"] == page.tables["sources"]
    with pytest.raises(CxrGuideError, match="cross-source study not found"):
        build_report([runs["stage2"]], tmp_path / "r3.html", sources=tmp_path / "figs")
    assert (
        "#sources-section"
        not in Page(
            build_report(
                [runs["stage2"]], tmp_path / "r4.html", explain_dir=tmp_path / "figs"
            ).read_text()
        ).links
    )


def test_report_renders_in_headless_chromium(report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            rows = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
                'table[id]')].map(t => [t.id, t.tBodies[0].rows.length]))""")
            images = page.evaluate("""() => [...document.images].map(i =>
                [i.complete, i.naturalWidth, i.getBoundingClientRect().width])""")
            shot = page.screenshot(full_page=True)
            first_figure = page.locator("#visual figure img").first.screenshot()
        finally:
            browser.close()
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests)
    assert rows["data-0"] == 7 and rows["models"] == 1 and rows["shortcut"] == 2
    assert all(rows[f"leaderboard-stage{k}"] == 1 for k in (1, 2, 3))
    assert all(rows[f"per-class-stage{k}"] == 3 for k in (1, 2, 3))
    assert len(images) == 11 and all(
        ok and w > 0 and shown > 100 for ok, w, shown in images
    )  # 8 + 3 reliability diagrams
    full = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=float)
    assert full.shape[1] == 1280 and full.shape[0] > 3000 and full.std() > 20
    cam = np.asarray(Image.open(io.BytesIO(first_figure)).convert("RGB"), dtype=float)
    assert cam.std() > 20 and (np.abs(cam[..., 0] - cam[..., 2]) > 60).mean() > 0.05  # in colour
    (tmp_path / "report.png").write_bytes(shot)  # for a person to look at


def test_report_sets_accuracy_beside_baselines_and_shows_every_warning(report, runs):
    html = report.read_text()
    page = Page(html)
    text = " ".join(" ".join(page.text).split())
    for stage in (1, 2, 3):
        metrics = json.loads((runs[f"stage{stage}"] / "metrics_test.json").read_text())
        (row,) = page.tables[f"baselines-stage{stage}"]
        majority = metrics["baselines"]["majority"]
        assert row[2].startswith(pct(majority["accuracy"])) and majority["class"] in row[2]
        assert row[3].startswith(f"{100 * majority['margin']:+.1f}")
        (lead,) = page.tables[f"leaderboard-stage{stage}"]
        assert lead[10] == pct(metrics["attention"]["lungs"]["area_share"])
        sources = page.tables[f"per-source-stage{stage}"]
        counts = metrics["per_source"]["site0"]["class_counts"]
        assert sources[0][3] == "/".join(map(str, counts.values()))
        assert sources[0][5].startswith("[")
        for w in metrics["warnings"]:
            assert f"{runs[f'stage{stage}'].name} [{w['code']}]" in text
    assert ('id="warnings"' in html) == any(
        json.loads((runs[f"stage{k}"] / "metrics_test.json").read_text())["warnings"]
        for k in (1, 2, 3)
    )


@pytest.fixture
def scratch_prep(runs):
    """The shared prepared folder, put back as it was afterwards: the test writes audit, rejection
    and lung-quality files into it, which other modules' reports would otherwise show."""
    prep = runs["prep"]
    before = {p: p.read_bytes() for p in prep.iterdir() if p.is_file()}
    dirs = {p for p in prep.iterdir() if p.is_dir()}
    yield prep
    for p in prep.iterdir():
        if p.is_dir() and p not in dirs:
            shutil.rmtree(p)
        elif p.is_file() and p not in before:
            p.unlink()
    for p, content in before.items():
        p.write_bytes(content)


def test_report_shows_the_audit_rejections_and_lung_masks(runs, scratch_prep, tmp_path):
    prep = scratch_prep
    (prep / "summary.json").write_text("{}")
    audit = audit_prepared(prep, seed=0).audit
    (prep / "rejected.csv").write_text(
        "source,path,stage,reason\nradiography,Normal/a.png,metadata,"
        "class folder not selected (--radiography-classes)\nradiography,Normal/b.png,metadata,"
        "class folder not selected (--radiography-classes)\nieee8023,x.jpg,image,not a frontal "
        "view (L)\n"
    )
    manifest = pd.read_csv(prep / "manifest.csv")
    flags = ["ok"] * len(manifest)
    flags[3] = "implausible"
    pd.DataFrame(
        {
            "image_id": manifest.image_id,
            "area_fraction": 0.3,
            "components": 2,
            "lungs": 2,
            "flag": flags,
        }
    ).to_csv(prep / "lung_quality.csv", index=False)
    out = build_report([runs["stage1"]], tmp_path / "r.html", explain_dir=tmp_path)
    page = Page(out.read_text())
    t = page.tables
    assert t["rejected-0"][0] == [
        "radiography",
        "metadata",
        "class folder not selected (--radiography-classes)",
        "2",
    ]
    assert t["audit-0-0"][0][0] == "site0" and t["audit-0-0"][0][-1] == "18"
    assert t["lungs-quality"] == [["ok", "35", "97.2"], ["implausible", "1", "2.8"]]
    text = " ".join(" ".join(page.text).split())
    assert "Data audit: class x source" in text and "Lung segmentation" in text
    for w in audit["warnings"]:
        assert f"[{w['code']}]" in text
    assert (
        page.images == 3
    )  # the run's panel, the implausible-mask example, its reliability diagram


def test_shortcut_split_table_and_provenance_show_scope_and_phantom(tmp_path):
    def record(stage: int, test: float, shortcut: float | None, **config) -> RunRecord:
        info = RunInfo("mobilenet_v2", stage, 64, [128, 64], [0.1, 0.05], "elu", "phantom:ab12")
        metrics = {"val": {"accuracy": 0.9}, "test": {"accuracy": test}}
        if shortcut is not None:
            metrics["shortcut_test"] = {"accuracy": shortcut}
        return RunRecord(tmp_path / f"stage{stage}-mobilenet_v2", info, config, metrics)

    assert shortcut_split_table([record(1, 0.8, None)]) is None
    table = shortcut_split_table([record(2, 0.97, 0.20), record(1, 0.85, 0.84)])
    assert [r[0] for r in table.rows] == ["Stage I", "Stage II"]
    assert table.rows[1][3:] == ["97.0", "20.0", "+77.0"]
    prov = provenance_table(
        [
            record(2, 0.9, None, l2=0.001, l2_scope="head", sampler="balanced"),
            record(1, 0.9, None, l2=0.001),
        ]
    )
    col = prov.header.index("L2 (lambda on scope)")
    assert [r[col] for r in prov.rows] == ["0.001 on head", "0.001 on all"]  # old runs: all
    assert prov.rows[0][col + 1] == "none / balanced"
