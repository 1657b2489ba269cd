from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cxrguide.config import TrainConfig, TuneConfig, load_config
from cxrguide.errors import ConfigError
from cxrguide.evaluation import evaluate as E
from cxrguide.evaluation.evaluate import evaluate_run, score_split
from cxrguide.training import dispatch
from cxrguide.training import tune as T
from inference_helpers import TINY_TRAIN

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def fast_eval(monkeypatch):
    """Trials still evaluate their run for real, minus the bootstrap CIs and Grad-CAM metrics
    (nearly all of a tiny trial's time, and nothing the tuner reads)."""

    def fast(*args, **kwargs):
        return evaluate_run(*args, **{**kwargs, "n_boot": 0, "attention_images": -1})

    def fast_score(run, split, cfg):
        return fast(run, split, cfg.data, device=cfg.device, progress=False)

    monkeypatch.setattr(E, "score_split", fast_score)
    return fast_score


def _cfg(prep: Path, out: Path, **kw) -> TuneConfig:
    base = dict(
        **TINY_TRAIN,
        data=prep,
        out=out,
        trials=2,
        startup_trials=1,
        prune_warmup=1,
        lr_range=[1e-3, 1e-1],
        batch_sizes=[4, 8],
        heartbeat=0,
    )
    return TuneConfig(**{**base, **kw})


def _trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def test_first_trial_is_the_configured_point_and_maps_back_to_a_train_config():
    cfg = TuneConfig(data=Path("p"))  # the paper's values
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(T.first_params(cfg))
    trial = study.ask()
    params = T.suggest(trial, cfg)
    assert params == {
        "lr": 1e-4,
        "l2": 1e-3,
        "momentum": 0.9,
        "batch_size": 32,
        "width_1": 128,
        "dropout_1": 0.10,
        "width_2": 64,
        "dropout_2": 0.05,
        "activation": "elu",
    }
    base = T.train_config(cfg)
    assert type(base) is TrainConfig and T.apply_params(base, params) == base
    other = T.apply_params(base, {**params, "width_1": 300, "dropout_2": 0.3, "lr": 0.05})
    assert (other.head_widths, other.head_dropouts, other.lr) == ([300, 64], [0.10, 0.3], 0.05)
    # Stage II keeps its parent's head: only the optimiser is searched; lr is the fine-tune lr
    s2 = TuneConfig(stage=2, finetune_lr=2e-5)
    trial = optuna.create_study().ask()
    assert set(T.suggest(trial, s2)) == {"lr", "l2", "momentum", "batch_size"}
    assert T.first_params(s2)["lr"] == 2e-5
    tuned = T.apply_params(T.train_config(s2), {**T.first_params(s2), "lr": 3e-3})
    assert (tuned.finetune_lr, tuned.lr) == (3e-3, 1e-4)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lr=0.5), "lr_range"),
        (dict(batch_size=12), "batch_sizes"),
        (dict(head_widths=[1024, 64]), "width_range"),
        (dict(activation="tanh", activations=["elu"]), "activations"),
        (dict(lr_range=[0.1, 0.01]), "lr_range"),
        (dict(stage=3), "stage"),
        (dict(trials=0), "trials"),
    ],
)
def test_config_rejects_a_first_trial_outside_the_space(kw, match):
    with pytest.raises(ConfigError, match=match):
        TuneConfig(**kw).validate()
    if "lr" in kw:  # without the configured first trial the base values may lie anywhere
        TuneConfig(**kw, paper_first=False).validate()


@pytest.mark.parametrize("kind", ["tpe", "gp", "random"])
def test_sampler_is_reproducible(kind):
    cfg = TuneConfig(startup_trials=2)

    def run() -> list[dict]:
        study = optuna.create_study(
            direction="maximize", sampler=T.PerTrialSeededSampler(kind, 7, 2)
        )
        study.optimize(lambda t: -abs(T.suggest(t, cfg)["lr"] - 1e-3), n_trials=5)
        return [t.params for t in _trials(study)]

    first = run()
    assert first == run()  # same seed, same suggestions (random start-up and model-based alike)
    assert len({json.dumps(p, sort_keys=True) for p in first}) == 5


def test_workers_sharing_a_seed_draw_different_points(tmp_path):
    cfg = TuneConfig()
    # two workers on one storage, both seeded 7, each asking while the other's trial runs
    url = f"sqlite:///{tmp_path / 's.db'}"
    a, b = (
        optuna.create_study(
            storage=url,
            study_name="s",
            load_if_exists=True,
            sampler=T.PerTrialSeededSampler("tpe", 7, 2),
        )
        for _ in range(2)
    )
    ta, tb = a.ask(), b.ask()
    assert T.suggest(ta, cfg) != T.suggest(tb, cfg)
    # a plain per-process seed would have made both workers propose the same point
    naive = [optuna.samplers.TPESampler(seed=7) for _ in range(2)]
    x, y = (optuna.create_study(sampler=s).ask() for s in naive)
    assert T.suggest(x, cfg) == T.suggest(y, cfg)


@pytest.mark.slow
def test_tune_trains_one_run_per_trial_and_is_reproducible(tiny_prepared, tmp_path, fast_eval):
    cfg = _cfg(tiny_prepared, tmp_path / "a", trials=3)
    study, out = T.tune(cfg, fast_eval)
    trials = _trials(study)
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert (
        trials[0].params == T.first_params(cfg) and trials[0].user_attrs["origin"] == "configured"
    )
    for t in trials:  # each trial is a complete run folder trained with its own values
        run = out / f"trial-{t.number:04d}/stage1-mobilenet_v2"
        assert t.user_attrs["run"] == str(run)
        metrics = json.loads((run / "metrics_val.json").read_text())
        assert t.value == pytest.approx(metrics["accuracy"])
        trained = load_config(TrainConfig, run / "config.yaml")
        assert trained == T.apply_params(dataclasses.replace(trained), t.params)
        assert trained.head_widths == [t.params["width_1"], t.params["width_2"]]
        assert trained.batch_size == t.params["batch_size"] and trained.lr == t.params["lr"]
    # all trials read one Stage I feature cache
    assert len(list((tiny_prepared / "features").glob("*.npy"))) == 1
    files = T.summarize(study, out)
    best = max(trials, key=lambda t: (t.value, -t.number))
    exported = load_config(TrainConfig, files["best"])
    assert exported.head_widths == [best.params["width_1"], best.params["width_2"]]
    assert exported.lr == best.params["lr"] and exported.data == tiny_prepared
    assert files["history_plot"].read_bytes()[:4] == b"\x89PNG"
    assert len(T.trials_frame(study)) == 3
    # same seed, same CPU: same suggested values and results (trial 1 is TPE's, not random)
    again, _ = T.tune(dataclasses.replace(cfg, out=tmp_path / "b", trials=2), fast_eval)
    assert [(t.params, t.value) for t in _trials(again)] == [
        (t.params, t.value) for t in trials[:2]
    ]
    # a worker capped at the study's total joins the finished study: nothing left to do
    assert len(T.tune(dataclasses.replace(cfg, total_trials=3), fast_eval)[0].trials) == 3
    # without a cap, running again adds its own trials to the same study
    assert len(T.tune(dataclasses.replace(cfg, trials=1), fast_eval)[0].trials) == 4


def test_pruner_stops_a_trailing_trial_after_its_epoch(tiny_prepared, tmp_path):
    cfg = _cfg(tiny_prepared, tmp_path / "t", max_epochs=3, trials=1)
    study, _ = T.open_study(T.plan(cfg))
    # an earlier trial that was perfect at every epoch: anything below it is pruned
    dist = optuna.distributions
    study.add_trial(
        optuna.trial.create_trial(
            params=T.first_params(cfg),
            value=1.0,
            intermediate_values={1: 1.0, 2: 1.0, 3: 1.0},
            distributions={
                "lr": dist.FloatDistribution(1e-3, 1e-1, log=True),
                "l2": dist.FloatDistribution(1e-6, 1e-1, log=True),
                "momentum": dist.FloatDistribution(0.0, 0.99),
                "batch_size": dist.CategoricalDistribution([4, 8]),
                "width_1": dist.IntDistribution(16, 512, log=True),
                "width_2": dist.IntDistribution(16, 512, log=True),
                "dropout_1": dist.FloatDistribution(0.0, 0.5),
                "dropout_2": dist.FloatDistribution(0.0, 0.5),
                "activation": dist.CategoricalDistribution(
                    ["elu", "relu", "gelu", "silu", "leaky_relu"]
                ),
            },
        )
    )
    study, out = T.tune(cfg, score_split)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert len(pruned) == 1 and list(pruned[0].intermediate_values) == [1]
    assert pruned[0].intermediate_values[1] < 1.0
    run = Path(pruned[0].user_attrs["trial_dir"]) / "stage1-mobilenet_v2"
    assert len((run / "history.csv").read_text().splitlines()) == 2  # header + epoch 1 of 3
    assert not (run / "model.pt").exists()


def test_failed_trial_is_recorded_and_the_study_goes_on(tiny_prepared, tmp_path, fast_eval):
    # the configured first trial diverges (lr 1e8): a real failure, recorded with its error
    cfg = _cfg(tiny_prepared, tmp_path / "f", lr=1e8, lr_range=[1e-3, 1e9])
    study, _ = T.open_study(T.plan(cfg))
    study.enqueue_trial({**T.first_params(cfg), "lr": 1e-2})  # then a sane one
    study, _ = T.tune(cfg, fast_eval)
    first, second = _trials(study)
    assert first.state == TrialState.FAIL and first.params["lr"] == 1e8
    assert first.user_attrs["error"].startswith("TrainingDivergedError:")
    assert "loss is nan" in first.user_attrs["error"]
    assert second.state == TrialState.COMPLETE
    frame = T.trials_frame(study)
    assert frame.loc[0, "state"] == "fail" and "TrainingDivergedError" in frame.loc[0, "error"]


def test_trial_of_a_dead_worker_is_failed_and_queued_to_resume_its_folder(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, direction="maximize")
    storage = study._storage
    dead = subprocess.Popen(["true"])
    dead.wait()
    for host, pid in ((T.HOST, dead.pid), ("elsewhere", dead.pid)):
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        for k, v in dict(host=host, pid=pid, trial_dir=f"/x/trial-{trial.number:04d}").items():
            trial.set_user_attr(k, v)
    assert T.finished_count(study) == 2  # running trials hold their slots
    assert T.recover_dead_trials(study, storage, retries=1) == [0]
    lost, other, retry = _trials(study)
    assert lost.state == TrialState.FAIL and "ended during the trial" in lost.user_attrs["error"]
    assert other.state == TrialState.RUNNING  # another host: left to its heartbeat
    assert retry.state == TrialState.WAITING
    assert retry.user_attrs == {
        "retry_of": 0,
        "attempt": 2,
        "resume_dir": "/x/trial-0000",
        "resume_host": T.HOST,
    }
    assert T.finished_count(study) == 1  # the retried failure no longer counts, its retry runs
    assert T.recover_dead_trials(study, storage, retries=1) == []  # nothing twice
    # a retry that dies too is not queued a third time (retries=1)
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    assert trial.number == retry.number and trial.params == lost.params
    trial.set_user_attr("host", T.HOST)
    trial.set_user_attr("pid", dead.pid)
    assert T.recover_dead_trials(study, storage, retries=1) == [retry.number]
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_joining_a_study_with_another_search_space_is_refused(tiny_prepared, tmp_path):
    cfg = _cfg(tiny_prepared, tmp_path / "j")
    T.open_study(T.plan(cfg))
    T.open_study(T.plan(dataclasses.replace(cfg, seed=3, workers=1)))  # other base is fine
    with pytest.raises(ConfigError, match="lr_range"):
        T.open_study(T.plan(dataclasses.replace(cfg, lr_range=[1e-4, 1e-1])))


def test_stage2_tunes_the_fine_tuning_optimiser_of_a_stage1_run(tiny_prepared, tmp_path, fast_eval):
    dispatch.train(
        TrainConfig(
            data=tiny_prepared,
            out=tmp_path / "runs",
            weights="none",
            image_size=64,
            max_epochs=1,
            batch_size=8,
            lr=1e-2,
        ),
        score_split,
    )
    parent = tmp_path / "runs/stage1-mobilenet_v2"
    cfg = _cfg(
        None,
        tmp_path / "s2",
        stage=2,
        from_run=parent,
        trials=1,
        max_epochs=1,
        finetune_lr=1e-2,
        backbone="ignored",
    )
    study, out = T.tune(cfg, fast_eval)
    (trial,) = study.trials
    assert study.study_name == "stage2-mobilenet_v2" and trial.state == TrialState.COMPLETE
    run = out / "trial-0000/stage2-mobilenet_v2"
    info = yaml.safe_load((run / "model.yaml").read_text())
    assert info["parent"] == str(parent) and info["stage"] == 2
    trained = load_config(TrainConfig, run / "config.yaml")
    assert trained.finetune_lr == trial.params["lr"] == 1e-2
