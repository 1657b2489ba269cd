"""Tiny trained runs and image files for the inference, serve and export tests.

Runs are built once per test session under pytest's base temp folder and reused by every test
module that asks (``tiny_run``, ``lung_run``, ``gated_run``); under pytest-xdist the workers share
that folder and a file lock, so one worker builds each run and the other waits for it instead of
training its own copy:

- ``tiny_run``: a real Stage I run (``dispatch.train``: MobileNet V2, random body, 64 px, 1 epoch).
- ``lung_run``: a small BasicUNet trained for a few epochs on lung phantoms (``lungs train``).
- ``gated_run``: the tiny run's weights in a run folder that declares the lung gate and holds
  a copy of ``lung_run`` as its lung model (``lungs/``), the layout Stage III writes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import yaml
from filelock import FileLock
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from cxr_testutils import make_prepared
from cxrguide.config import LungsTrainConfig, TrainConfig
from cxrguide.core.runs import bundle_lung_run
from cxrguide.evaluation.evaluate import score_split
from cxrguide.lungs.train import train_lungs
from cxrguide.training.dispatch import train
from lung_phantoms import phantom, prepared_lung_phantoms

# The tiny Stage I run the training tests start from (fields they all share; override per test).
TINY_TRAIN = dict(
    stage=1,
    backbone="mobilenet_v2",
    weights="none",
    image_size=64,
    max_epochs=2,
    batch_size=8,
    seed=0,
    lr=1e-2,
)


def tiny_train_config(prep: Path | None, out: Path, **kw) -> TrainConfig:
    """A :data:`TINY_TRAIN` config on ``prep`` writing to ``out``, with ``kw`` on top."""
    return TrainConfig(**{**TINY_TRAIN, "data": prep, "out": out, **kw})


def session_root(tmp_path_factory) -> Path:
    """This run's temp root: the session's base temp, or under xdist the folder above the
    workers' base temps (``pytest-N/``, made for this run only), which every worker sees."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def building(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s build lock: one process builds an artefact, the others then reuse it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        yield


def _shared(tmp_path_factory) -> Path:
    root = session_root(tmp_path_factory) / "inference-shared"
    root.mkdir(exist_ok=True)
    return root


def tiny_prepared(tmp_path_factory) -> Path:
    root = _shared(tmp_path_factory) / "prep"
    with building(root):
        if not (root / "summary.json").exists():  # written last: a finished folder
            shutil.rmtree(root, ignore_errors=True)
            make_prepared(root)
    return root


def tiny_run(tmp_path_factory) -> Path:
    runs = _shared(tmp_path_factory) / "runs"
    run = runs / "stage1-mobilenet_v2"
    with building(runs):
        if not (run / "model.pt").exists():
            shutil.rmtree(run, ignore_errors=True)
            cfg = TrainConfig(
                stage=1,
                data=tiny_prepared(tmp_path_factory),
                backbone="mobilenet_v2",
                weights="none",
                image_size=64,
                max_epochs=1,
                batch_size=8,
                out=runs,
            )
            train(cfg, score_split)
    return run


def lung_run(tmp_path_factory) -> Path:
    root = _shared(tmp_path_factory) / "lungs"
    run = root / "run"
    with building(root):
        if not (run / "best.pt").exists():
            shutil.rmtree(root, ignore_errors=True)
            prep = prepared_lung_phantoms(root, n=20, size=64)
            cfg = LungsTrainConfig(
                data=prep,
                out=run,
                features=[4, 8, 16, 32, 64, 4],
                max_epochs=3,
                batch_size=4,
                lr=3e-3,
                progress=False,
            )
            train_lungs(cfg)
    return run


def gated_run(tmp_path_factory) -> Path:
    """The tiny run's weights, declared lung-gated with ``lung_run`` as its lung model."""
    src = tiny_run(tmp_path_factory)
    lungs = lung_run(tmp_path_factory)
    run = _shared(tmp_path_factory) / "runs" / "stage3-mobilenet_v2"
    with building(run):
        if not (run / "model.yaml").exists():  # written last
            run.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / "model.pt", run / "model.pt")
            info = yaml.safe_load((src / "model.yaml").read_text())
            lung_model = bundle_lung_run(run, str(lungs))  # inside the run, as Stage III does
            info.update(stage=3, parent=str(src), lung_gate=True, lung_model=lung_model)
            (run / "model.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    return run


def film(path: Path, width: int = 80, height: int = 96, seed: int = 0) -> Path:
    """A phantom chest film (dark lungs in a bright body) saved in the format of the suffix."""
    img, _, _ = phantom(np.random.default_rng(seed), width, height)
    if path.suffix.lower() in (".dcm", ""):
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        ds.Modality = "DX"
        ds.set_pixel_data(img.astype(np.uint16) * 16, "MONOCHROME2", 12)
        ds.save_as(path, enforce_file_format=True)
    else:
        Image.fromarray(img).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")
    return path


PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PAT-0042-SECRET"}


def study_film(
    path: Path, width: int = 80, height: int = 96, seed: int = 0, *, monochrome1: bool = False
) -> Path:
    """A phantom film as a DICOM a PACS would send: DX, patient, study, series and instance
    UIDs, an accession number (the patient's name and ID must never reach a result table)."""

    img, _, _ = phantom(np.random.default_rng(seed), width, height)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    ds.SOPInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality, ds.ViewPosition, ds.PatientOrientation = "DX", "PA", ["L", "F"]
    ds.PatientName, ds.PatientID = PATIENT["PatientName"], PATIENT["PatientID"]
    ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber = "19700101", "F", f"ACC{seed:04d}"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
    ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, 1
    pixels = img.astype(np.uint16) * 16
    if monochrome1:
        pixels = 4095 - pixels
    ds.set_pixel_data(pixels, "MONOCHROME1" if monochrome1 else "MONOCHROME2", 12)
    ds.save_as(path, enforce_file_format=True)
    return path
