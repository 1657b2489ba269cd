"""`serve --dicom-port PORT`: a DICOM C-STORE / C-ECHO listener (pynetdicom), so a PACS or a
modality can send radiographs and get the results back as DICOM.

Accepted: Computed Radiography, Digital X-Ray (for presentation) and Secondary Capture images, in
any transfer syntax pynetdicom knows (what cannot be decoded is refused by the one reader), plus
Verification (C-ECHO). Any called AE title is answered unless ``ae_title`` is given. Each film
received is written to a private 0700 temp folder, classified by the server's
:class:`~cxrguide.inference.predictor.Predictor`, its SR + Grad-CAM Secondary Capture written by
:class:`~cxrguide.inference.dicom_out.DicomWriter` into ``--dicom-out`` and, with ``--dicom-return
AE@host:port``, queued for a C-STORE back (one background sender: a slow or absent return node
never holds up the sender's association). The C-STORE answer comes once the SR is on disk:
success (0x0000), or 0xC000 "cannot understand" with the one-line reason in ErrorComment for a
film the reader refuses (not a radiograph, unreadable, no StudyInstanceUID, ...).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxrguide.config.inference import parse_peer
from cxrguide.errors import CxrGuideError, ImageReadError
from cxrguide.inference.dicom_out import DicomResult, DicomWriter

DEFAULT_AE_TITLE = "CXRGUIDE"
STATUS_OK, STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES = 0x0000, 0xC000, 0xA700
log = logging.getLogger("cxrguide.pacs")


def _storage_classes() -> list[str]:
    from pynetdicom import sop_class

    return [
        sop_class.ComputedRadiographyImageStorage,
        sop_class.DigitalXRayImageStorageForPresentation,
        sop_class.SecondaryCaptureImageStorage,
    ]


class PacsListener:
    """The C-STORE SCP over one :class:`DicomWriter`; ``start()`` -> the bound port."""

    def __init__(
        self,
        writer: DicomWriter,
        host: str = "127.0.0.1",
        port: int = 11112,
        *,
        ae_title: str = "",
        return_to: str = "",
    ) -> None:
        self.writer, self.host, self.port = writer, host, port
        self.ae_title = ae_title.strip()
        self.return_to = parse_peer(return_to) if return_to else None
        self.workdir: Path | None = None
        self._server: Any = None
        self._sender: ThreadPoolExecutor | None = None
        self.received = 0

    def start(self) -> int:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title or DEFAULT_AE_TITLE)
        ae.require_called_aet = bool(self.ae_title)
        for uid in _storage_classes():
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        self.workdir = Path(tempfile.mkdtemp(prefix="cxrguide-pacs-"))  # mode 0700
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: STATUS_OK)]
        try:
            self._server = ae.start_server(
                (self.host, self.port), block=False, evt_handlers=handlers
            )
        except OSError as err:
            shutil.rmtree(self.workdir, ignore_errors=True)
            why = err.strerror or str(err)
            raise CxrGuideError(
                f"--dicom-port: cannot listen on {self.host}:{self.port}: {why}"
            ) from None
        if self.return_to is not None:
            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxrguide-return")
        self.port = int(self._server.server_address[1])
        _warm_up()
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._sender is not None:
            self._sender.shutdown(wait=True)
            self._sender = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- handlers (run in pynetdicom's association threads) -----------------------------------
    def _on_store(self, event: Any) -> Any:
        calling = str(event.assoc.requestor.ae_title).strip()
        path = (self.workdir or Path(tempfile.gettempdir())) / f"{uuid.uuid4().hex}.dcm"
        try:
            path.write_bytes(event.encoded_dataset(include_meta=True))
            sop = str(event.request.AffectedSOPInstanceUID)
            prediction = self.writer.predictor.predict_file(path, source=f"{calling}:{sop}")
            result = self.writer.write(prediction)
        except (ImageReadError, CxrGuideError) as err:
            reason = err.reason if isinstance(err, ImageReadError) else str(err)
            log.warning("C-STORE from %s refused: %s", calling, reason)
            return _failure(STATUS_CANNOT_UNDERSTAND, reason)
        except OSError as err:
            log.warning("C-STORE from %s: cannot write (%s)", calling, err)
            return _failure(STATUS_OUT_OF_RESOURCES, f"cannot write: {err.strerror or err}")
        finally:
            path.unlink(missing_ok=True)
        self.received += 1
        log.info(
            "C-STORE from %s: %s %s -> %s",
            calling,
            prediction.label,
            {k: round(v, 3) for k, v in prediction.probabilities.items()},
            None if result is None else result.sr_path.name,
        )
        if result is not None and self._sender is not None:
            self._sender.submit(self._send_back, result)
        return STATUS_OK

    def _send_back(self, result: DicomResult) -> None:
        """C-STORE the SR (and SC, SEG) to ``--dicom-return``; failures are logged, never raised."""
        from pynetdicom import AE
        from pynetdicom.sop_class import (
            ComprehensiveSRStorage,
            SecondaryCaptureImageStorage,
            SegmentationStorage,
        )

        assert self.return_to is not None
        ae_title, host, port = self.return_to
        ae = AE(ae_title=self.ae_title or DEFAULT_AE_TITLE)
        ae.add_requested_context(ComprehensiveSRStorage)
        ae.add_requested_context(SecondaryCaptureImageStorage)
        ae.add_requested_context(SegmentationStorage)
        assoc = ae.associate(host, port, ae_title=ae_title)
        if not assoc.is_established:
            log.warning(
                "--dicom-return %s@%s:%d: association refused or no answer", ae_title, host, port
            )
            return
        try:
            for path in (result.sr_path, result.sc_path, result.seg_path):
                if path is not None:
                    status = assoc.send_c_store(pydicom.dcmread(path))
                    code = getattr(status, "Status", None)
                    if code != STATUS_OK:
                        log.warning("--dicom-return: %s answered status %s", path.name, code)
        finally:
            assoc.release()


def _failure(status: int, comment: str) -> Any:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds


def _warm_up() -> None:
    """Import what the first C-STORE needs now, not while a modality waits (highdicom's code
    tables, pytorch-grad-cam and OpenCV: seconds when cold)."""
    import highdicom  # noqa: F401
    import pytorch_grad_cam  # noqa: F401
    import pytorch_grad_cam.utils.image  # noqa: F401

    _ = codes.DCM.ProcessingEquipment, codes.DCM.Device, codes.DCM.Comment
