"""`serve --dicom-port`: dcmtk's echoscu / storescu (clients nobody here wrote) send films to the
pynetdicom listener; the SR + SC land on disk, parse with dsrdump and re-read with pydicom, and
with a return node they come back by C-STORE (dcmtk's storescp)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from cxrguide.inference.dicom_out import DicomWriter
from cxrguide.inference.predictor import Predictor
from cxrguide.serve.pacs import PacsListener
from inference_helpers import study_film

from .conftest import free_port

pytestmark = [
    pytest.mark.skipif(
        shutil.which("storescu") is None,
        reason="dcmtk (storescu/echoscu) not installed: make system-deps",
    ),
    pytest.mark.usefixtures("one_thread_per_module"),
]


@pytest.fixture(scope="module")
def full_predictor(run) -> Predictor:
    return Predictor(run, backend="fp32")  # default pixel limit: 2,000 x 2,000 films welcome


@pytest.fixture
def listen(full_predictor, tmp_path) -> Iterator:
    started: list[PacsListener] = []

    def start(**kwargs) -> tuple[PacsListener, Path]:
        out = tmp_path / f"out{len(started)}"
        out.mkdir()
        listener = PacsListener(DicomWriter(full_predictor, out), "127.0.0.1", 0, **kwargs)
        listener.start()
        started.append(listener)
        return listener, out

    yield start
    for listener in started:
        listener.stop()


def _dcmtk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


def test_echoscu_and_storescu_to_sr_and_sc(listen, tmp_path):
    listener, out = listen()
    port = str(listener.port)
    assert _dcmtk("echoscu", "-aec", "WHATEVER", "127.0.0.1", port).returncode == 0
    film = study_film(tmp_path / "film.dcm", width=90, height=110, seed=7)
    sent = _dcmtk("storescu", "-aec", "ANY-AE", "127.0.0.1", port, str(film))
    assert sent.returncode == 0, sent.stderr
    source = pydicom.dcmread(film)
    sr_path, sc_path = sorted(out.glob("SR_*.dcm")), sorted(out.glob("SC_*.dcm"))
    assert len(sr_path) == len(sc_path) == 1 and listener.received == 1
    sr, sc = pydicom.dcmread(sr_path[0]), pydicom.dcmread(sc_path[0])
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sr.VerificationFlag == "UNVERIFIED" and sr.StudyInstanceUID == source.StudyInstanceUID
    assert (sc.Rows, sc.Columns) == (110, 90) and sc.StudyInstanceUID == source.StudyInstanceUID
    dump = _dcmtk("dsrdump", str(sr_path[0]))
    assert dump.returncode == 0 and "Probability of COVID-19" in dump.stdout
    assert not list(listener.workdir.iterdir())  # the received film is not kept


def test_called_ae_title_and_refused_films(listen, tmp_path):
    listener, out = listen(ae_title="CXRG")
    port = str(listener.port)
    film = study_film(tmp_path / "film.dcm")
    wrong = _dcmtk("storescu", "-aec", "OTHER", "127.0.0.1", port, str(film))
    assert wrong.returncode != 0 and not list(out.iterdir())
    ds = pydicom.dcmread(film)
    ds.Modality = "CT"  # a DX object that says CT: the reader's radiograph gate refuses it
    ds.save_as(tmp_path / "ct.dcm")
    refused = _dcmtk("storescu", "-v", "-aec", "CXRG", "127.0.0.1", port, str(tmp_path / "ct.dcm"))
    assert "Error: CannotUnderstand" in refused.stdout + refused.stderr  # status 0xC000
    assert not list(out.iterdir()) and listener.received == 0


@pytest.mark.skipif(shutil.which("storescp") is None, reason="dcmtk's storescp not installed")
def test_results_are_sent_back_to_the_return_node(listen, tmp_path):
    back = tmp_path / "returned"
    back.mkdir()
    port = free_port()
    node = subprocess.Popen(
        ["storescp", "-aet", "RET", "-od", str(back), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        listener, out = listen(return_to=f"RET@127.0.0.1:{port}")
        film = study_film(tmp_path / "film.dcm", seed=2)
        assert _dcmtk("storescu", "127.0.0.1", str(listener.port), str(film)).returncode == 0
        deadline = time.monotonic() + 30
        while len(list(back.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        got = {pydicom.dcmread(p).SOPInstanceUID for p in back.iterdir()}
        written = {pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()}
        assert got == written and len(got) == 2
    finally:
        node.terminate()
        node.wait(timeout=10)


@pytest.mark.slow
def test_a_2000_px_film_has_its_sr_on_disk_within_5_s(listen, tmp_path):
    listener, out = listen()
    film = study_film(tmp_path / "big.dcm", width=2000, height=2000, seed=1)
    _dcmtk("storescu", "127.0.0.1", str(listener.port), str(study_film(tmp_path / "warm.dcm")))
    started = time.perf_counter()
    sent = _dcmtk("storescu", "127.0.0.1", str(listener.port), str(film))
    elapsed = time.perf_counter() - started
    assert sent.returncode == 0 and len(list(out.glob("SR_*.dcm"))) == 2
    assert elapsed <= 5.0, f"storescu -> SR + SC on disk took {elapsed:.2f} s"
