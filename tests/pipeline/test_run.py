"""The whole chain on a tiny synthetic set: every step runs once, then everything is reused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import cxrguide.pipeline.run as run_mod
from cxrguide.config import (
    LungsPrepareConfig,
    LungsTrainConfig,
    PipelineConfig,
    PrepareConfig,
    SynthConfig,
    TrainConfig,
    TuneConfig,
    from_dict,
    load_config,
)
from cxrguide.errors import ConfigError
from cxrguide.experiments import phantom_body
from cxrguide.pipeline import run
from cxrguide.pipeline.run import plan, run_pipeline


@pytest.mark.slow
@pytest.mark.usefixtures("no_bootstrap")
def test_tiny_pipeline_end_to_end_then_reused(tmp_path):
    torch.set_num_threads(1)
    quick = {"image_size": 64, "max_epochs": 1, "batch_size": 8}
    cfg = PipelineConfig(
        out=tmp_path / "qs",
        synth={"n": 45, "size": 64, "workers": 1},
        prepare={"size": 64, "workers": 1},
        lungs_prepare={"size": 64, "workers": 1},
        lungs={"features": [4, 8, 16, 32, 64, 4], "max_epochs": 1, "batch_size": 8},
        stage1={**quick, "backbone": "mobilenet_v2", "weights": "none", "max_epochs": 2},
        stage2={"top": 1, **quick},
        stage3={"top": 1, "attention": ["gate", "gain"], **quick},
        explain={"per_group": 1},
    )
    logs: list[str] = []
    results = run_pipeline(cfg, log=logs.append)
    assert {r.status for r in results.values()} == {"ran"}
    report = tmp_path / "qs/report/report.html"
    assert report.exists() and report.stat().st_size > 10_000
    assert (tmp_path / "qs/stage3/stage3-mobilenet_v2/model.pt").exists()
    again = run_pipeline(cfg, log=logs.append)
    assert {r.status for r in again.values()} == {"reused"}
    # a changed Stage III section re-runs Stage III and what follows, nothing before it
    changed = run_pipeline(
        PipelineConfig(**{**cfg.__dict__, "stage3": {**cfg.stage3, "gain_alpha": 0.5}}),
        log=logs.append,
    )
    ran = {name for name, r in changed.items() if r.status == "ran"}
    assert ran == {"stage3", "explain", "report"}


def test_every_section_is_checked_before_the_first_step(tmp_path):
    bad = [
        ("stage2", {"lr": "fast"}, r"pipeline\.stage2\.lr: expected a number"),
        ("stage3", {"attention": ["gate", "nope"]}, "nope"),
        ("report", {"titel": "x"}, r"pipeline\.report: unknown field\(s\) titel"),
        ("explain", {"method": "magic"}, r"pipeline\.explain\.method: 'magic'"),
        ("tune", {"trials": 2, "sampler": "grid"}, r"pipeline\.tune\.sampler"),
    ]
    for section, value, message in bad:
        cfg = PipelineConfig(out=tmp_path / section, **{section: value})
        with pytest.raises(ConfigError, match=message):
            run_pipeline(cfg, log=lambda s: None)
        assert not (tmp_path / section).exists()  # nothing ran, nothing was written


STEP_FUNCS = [
    "_synth",
    "_prepare",
    "_lungs_prepare",
    "_lungs_train",
    "_lungs_predict",
    "_audit",
    "_train",
    "_train",
    "_train",
    "_explain",
    "_report",
]


@pytest.mark.slow
@pytest.mark.usefixtures("no_bootstrap")
def test_killed_after_every_step_resumes_and_completes(tmp_path, monkeypatch):
    """Kill right after each step's work, before its marker; each re-run reuses what finished,
    re-enters the killed step (which resumes inside) and goes one step further."""

    torch.set_num_threads(1)
    quick = {"image_size": 64, "max_epochs": 1, "batch_size": 8}
    cfg = PipelineConfig(
        out=tmp_path / "qs",
        synth={"n": 45, "size": 64, "workers": 1},
        prepare={"size": 64, "workers": 1},
        lungs_prepare={"size": 64, "workers": 1},
        lungs={"features": [4, 8, 16, 32, 64, 4], "max_epochs": 1, "batch_size": 8},
        stage1={**quick, "backbone": "mobilenet_v2", "weights": "none"},
        stage2={"top": 1, **quick},
        stage3={"top": 1, **quick},
        explain={"per_group": 1},
    )
    names = [
        "synth",
        "prepare",
        "lungs_prepare",
        "lungs_train",
        "lungs_predict",
        "audit",
        "stage1",
        "stage2",
        "stage3",
        "explain",
        "report",
    ]
    for k, func in enumerate(STEP_FUNCS):
        # calls in this run: the step killed last time (run again) and this one
        nth = 2 if k and STEP_FUNCS[k - 1] == func else 1
        real, calls = getattr(run_mod, func), []

        def dying(*args, real=real, calls=calls, nth=nth, **kwargs):
            result = real(*args, **kwargs)
            calls.append(1)
            if len(calls) == nth:
                raise KeyboardInterrupt
            return result

        logs: list[str] = []
        with monkeypatch.context() as m:
            m.setattr(run_mod, func, dying)
            with pytest.raises(KeyboardInterrupt):
                run_pipeline(cfg, log=logs.append)
        assert f"[pipeline] {names[k]}: running" in "\n".join(logs)
        assert not (tmp_path / f"qs/.steps/{names[k]}.json").exists()
        if k:  # the step killed last time runs again and resumes; those before it are reused
            assert f"[pipeline] {names[k - 1]}: running (resuming)" in logs
            assert all(f"[pipeline] {n}: reused (unchanged)" in logs for n in names[: k - 1])
    results = run_pipeline(cfg, log=lambda s: None)
    assert [r.status for r in results.values()] == ["reused"] * 10 + ["ran"]
    assert (tmp_path / "qs/report/report.html").stat().st_size > 10_000


def test_phantom_weights_resolve_to_verified_files_before_stage1(monkeypatch):
    asked: list[list[str]] = []

    def fake(names, log):
        asked.append(names)
        return "/cache/phantom-{backbone}.safetensors", {n: f"phantom:{n}" for n in names}

    monkeypatch.setattr(phantom_body, "resolve_phantom", fake)
    s1 = TrainConfig(backbone="mobilenet_v2,efficientnet_b0", weights="phantom", lr=0.01)
    resolved, labels = run._resolve_bodies(s1, log=lambda m: None)
    assert asked == [["mobilenet_v2", "efficientnet_b0"]]
    assert resolved == dataclasses.replace(s1, weights="/cache/phantom-{backbone}.safetensors")
    assert labels == {
        "mobilenet_v2": "phantom:mobilenet_v2",
        "efficientnet_b0": "phantom:efficientnet_b0",
    }
    plain = TrainConfig(weights="none")
    assert run._resolve_bodies(plain, log=print) == (plain, {})


def test_the_shipped_pipeline_configs_are_valid():
    for name in ("quickstart.yaml", "real-data.yaml"):
        cfg = load_config(PipelineConfig, Path(__file__).parents[2] / "configs" / name)
        for cls, section in (
            (SynthConfig, cfg.synth),
            (PrepareConfig, cfg.prepare),
            (LungsPrepareConfig, cfg.lungs_prepare),
            (LungsTrainConfig, cfg.lungs),
            (TrainConfig, cfg.stage1),
            (TrainConfig, cfg.stage2),
            (TrainConfig, cfg.stage3),
            (TuneConfig, cfg.tune),
        ):
            if section is not cfg.tune or cfg.tune.get("trials", 0) > 0:  # trials 0: no tuning
                from_dict(cls, section, f"{name}")
    real = load_config(PipelineConfig, Path(__file__).parents[2] / "configs/real-data.yaml")
    kinds = [s.partition("=")[0] for s in real.sources]  # the study's five + external-cxr's four
    assert kinds == ["ieee8023", "actualmed", "figure1", "radiography", "rsna", *["table"] * 4]
    assert all("../shared/" in s for s in real.sources) and real.lung_sources[0].startswith("v7=")
    assert real.stage1["weights"] == "imagenet" and real.stage1["sampler"] == "balanced"
    assert real.stage1["backbone"] == "efficientnet_lite0"
    assert plan(real).prepare.source == real.sources  # every spec parses


def test_sources_and_label_map_reach_prepare(tmp_path):
    (tmp_path / "map.yaml").write_text("healthy: Normal\n")
    cfg = PipelineConfig(
        out=tmp_path / "p",
        sources=["folder:kids=/d/kids", "table=/d/t.csv"],
        label_map=tmp_path / "map.yaml",
    )
    prep = plan(cfg).prepare
    assert prep.source == ["folder:kids=/d/kids", "table=/d/t.csv"]
    assert prep.label_map == {"healthy": "Normal"}  # the map in effect joins the fingerprint
    inline = plan(
        PipelineConfig(out=tmp_path / "q", sources=["folder=/d"], label_map={"sick": "Pneumonia"})
    ).prepare
    assert inline.label_map == {"sick": "Pneumonia"}
    with pytest.raises(ConfigError, match="give label_map once"):
        plan(
            PipelineConfig(
                out=tmp_path / "r",
                label_map={"a": "Normal"},
                prepare={"label_map": {"b": "Normal"}},
            )
        )
    with pytest.raises(ConfigError, match="'a' maps to 'sick'"):
        plan(PipelineConfig(out=tmp_path / "s", label_map={"a": "sick"}))
    with pytest.raises(ConfigError, match="folder:a b=/d"):
        plan(PipelineConfig(out=tmp_path / "t", sources=["folder:a b=/d"]))
