from __future__ import annotations

import pytest

from cxrguide.pipeline.steps import StepRunner


def test_steps_rerun_only_when_config_or_inputs_change(tmp_path):
    calls: list[str] = []

    def make(name):
        def func(step_dir):
            step_dir.mkdir(parents=True, exist_ok=True)
            (step_dir / "out.txt").write_text(name)
            calls.append(name)
            return {"file": str(step_dir / "out.txt")}

        return func

    logs: list[str] = []
    runner = StepRunner(tmp_path, log=logs.append)
    runner.run("a", {"x": 1}, make("a"))
    runner.run("b", {"y": 1}, make("b"), after=("a",))
    assert calls == ["a", "b"]
    again = StepRunner(tmp_path, log=logs.append)
    assert again.run("a", {"x": 1}, make("a")).status == "reused"
    assert again.run("b", {"y": 1}, make("b"), after=("a",)).status == "reused"
    assert calls == ["a", "b"] and "[pipeline] a: reused (unchanged)" in logs
    # a changed upstream config re-runs it and everything after it
    third = StepRunner(tmp_path, log=logs.append)
    assert third.run("a", {"x": 2}, make("a")).status == "ran"
    assert third.run("b", {"y": 1}, make("b"), after=("a",)).status == "ran"
    assert calls == ["a", "b", "a", "b"]


def test_killed_step_resumes_in_place_and_changed_step_starts_clean(tmp_path):
    def dies(step_dir):
        step_dir.mkdir(parents=True, exist_ok=True)
        (step_dir / "partial").write_text("epoch 3")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        StepRunner(tmp_path, log=lambda s: None).run("train", {"e": 5}, dies)
    seen = []

    def resumes(step_dir):
        seen.append((step_dir / "partial").exists())
        return {}

    logs: list[str] = []
    StepRunner(tmp_path, log=logs.append).run("train", {"e": 5}, resumes)
    assert seen == [True] and "[pipeline] train: running (resuming)" in logs
    StepRunner(tmp_path, log=logs.append).run("train", {"e": 6}, resumes)
    assert seen == [True, False]  # stale outputs of the old config were cleared


def test_where_a_run_is_tracked_does_not_change_its_fingerprint():
    from cxrguide.config import TrainConfig
    from cxrguide.pipeline.steps import fingerprint

    plain = fingerprint(TrainConfig(), ["prep"])
    assert fingerprint(TrainConfig(mlflow="sqlite:///m.db"), ["prep"]) == plain
    assert fingerprint(TrainConfig(lr=0.5), ["prep"]) != plain
