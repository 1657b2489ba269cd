"""`cxrguide predict | export | serve`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from cxrguide.config.core import _f
from cxrguide.errors import ConfigError

# ---- inference (`cxrguide predict | export | serve`) -----------------------------------------

_BACKEND_HELP = (
    "auto | fp32 | channels_last | bf16 | onnx | onnx-int8 (auto: the fastest agreeing CPU path; "
    "onnx-int8: static INT8 calibrated on the run's validation films)"
)
Backend = Literal["auto", "fp32", "channels_last", "bf16", "onnx", "onnx-int8"]
# CAM method names, declared once (attention/cam.py, serve, explain and the galleries derive
# theirs): name -> label in figures. The library class is the name in pytorch-grad-cam's
# spelling (gradcam++ -> GradCAMPlusPlus). Gradient-based ones are fast enough for every image;
# Score-CAM needs one forward pass per feature channel, so only explain/report offer it.
CAM_METHODS: dict[str, str] = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "xgradcam": "XGrad-CAM",
    "hirescam": "HiRes-CAM",
    "layercam": "Layer-CAM",
    "eigencam": "Eigen-CAM",
}
SLOW_CAM_METHODS: dict[str, str] = {"scorecam": "Score-CAM"}
# every method `explain` and `report` offer (their --method choices; the galleries' labels)
EXPLAIN_CAM_METHODS: dict[str, str] = {**CAM_METHODS, **SLOW_CAM_METHODS}
CamMethod = Literal[tuple(CAM_METHODS)]  # type: ignore[valid-type]  # the names as a type
_REDACT_HELP = "replace file names in the output by a salted hash (file-<16 hex>)"
_SALT_HELP = "salt for --redact-paths (default: $CXRGUIDE_REDACT_SALT, else random per process)"
TOKEN_ENV = "CXRGUIDE_TOKEN"
MIN_TOKEN_CHARS = 16


def check_token(token: str, where: str = "token") -> None:
    """A bearer token must be long enough to resist guessing and fit in an HTTP header."""
    if not token:
        return
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"{where}: at least {MIN_TOKEN_CHARS} characters (e.g. python -c "
            "'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if not (token.isascii() and token.isprintable()) or " " in token:
        raise ConfigError(f"{where}: printable ASCII without spaces")


@dataclasses.dataclass
class PredictConfig:
    """`cxrguide predict RUN INPUT...`: labels for new PNG/JPEG/DICOM files or folders."""

    run: Path | None = _f(None, "run folder written by 'cxrguide train'", metavar="RUN")
    inputs: list[str] = _f([], "image files or folders (folders are searched recursively)")
    format: Literal["table", "json", "csv"] = _f("table", "output format (--json, --csv)")
    output: Path | None = _f(None, "write the results here instead of stdout", metavar="FILE")
    cam: Path | None = _f(
        None, "write Grad-CAM overlay PNGs (each film's own size) into this folder", metavar="DIR"
    )
    cam_method: CamMethod = _f("gradcam", "CAM method for --cam")
    redact_paths: bool = _f(False, _REDACT_HELP)
    redact_salt: str = _f("", _SALT_HELP, metavar="SALT")
    dicom_out: Path | None = _f(
        None,
        "per DICOM input, write a DICOM SR (probabilities) and a "
        "Grad-CAM Secondary Capture into this folder",
        metavar="DIR",
    )
    batch_size: int = _f(16, "images per forward pass")
    backend: Backend = _f("auto", _BACKEND_HELP)
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    lung_model: Path | None = _f(
        None, "lung segmenter run (default: the run's own, if any)", metavar="RUN"
    )
    max_pixels: int = _f(64_000_000, "refuse images with more pixels (decompression-bomb guard)")
    allow_modality: list[str] = _f(
        [],
        "DICOM modalities to read besides radiographs CR/DX/DR/RG (e.g. CT; 'all': any)",
        metavar="MODALITY",
    )
    allow_for_processing: bool = _f(
        False, "read DICOMs marked FOR PROCESSING (raw detector data), with a warning"
    )
    decode_timeout_s: float = _f(60.0, "refuse a file whose decoding takes longer (seconds)")
    threads: int = _f(0, "CPU threads for inference (0: the library default)")
    progress: bool = _f(True, "show a progress bar on stderr")
    abstain: bool = _f(
        False,
        "label 'abstain' for unreliable films and those below the run's "
        "validation confidence threshold (docs/calibration.md)",
    )

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("batch_size: must be >= 1")
        if self.max_pixels <= 0 or self.threads < 0:
            raise ConfigError("max_pixels/threads: max_pixels must be > 0, threads >= 0")
        if self.decode_timeout_s <= 0:
            raise ConfigError("decode_timeout_s: must be positive")


@dataclasses.dataclass
class ExportConfig:
    """`cxrguide export RUN --format onnx|torchscript --out FILE`: a portable classifier file."""

    run: Path | None = _f(None, "run folder written by 'cxrguide train'", metavar="RUN")
    format: Literal["onnx", "torchscript"] = _f("onnx", "file format")
    out: Path | None = _f(None, "output file (.onnx or .pt)", metavar="FILE")
    opset: int = _f(18, "ONNX opset version (18-23: what the torch.export based exporter writes)")
    check: bool = _f(True, "check the file against PyTorch (probabilities within 1e-4)")
    int8: bool = _f(
        False, "static INT8 (QDQ, per-channel) calibrated on the run's validation films"
    )
    calibration_films: int = _f(64, "validation films used to calibrate --int8")
    min_agreement: float = _f(0.99, "refuse --int8 below this top-1 agreement with fp32")
    seed: int = _f(0, "seed choosing the calibration films")
    int8_reduce_range: bool = _f(
        True,
        "--int8 weights in 7 bits: exact on AVX2 CPUs without VNNI; --no-int8-reduce-range "
        "(8 bits) only for CPUs with VNNI (docs/performance.md)",
    )

    def validate(self) -> None:
        if not 18 <= self.opset <= 23:
            raise ConfigError("opset: must be between 18 and 23")
        if self.calibration_films < 1 or not 0 <= self.min_agreement <= 1:
            raise ConfigError("calibration_films/min_agreement: >= 1 and between 0 and 1")


@dataclasses.dataclass
class ServeConfig:
    """`cxrguide serve RUN`: REST API + web page on one run."""

    run: Path | None = _f(None, "run folder written by 'cxrguide train'", metavar="RUN")
    host: str = _f("127.0.0.1", "interface to listen on (0.0.0.0 exposes it to the network)")
    port: int = _f(8000, "TCP port")
    token: str = _f(
        "",
        "bearer token every /v1/* call must send (default: $CXRGUIDE_TOKEN; "
        "at least 16 characters)",
        metavar="TOKEN",
    )
    allowed_host: list[str] = _f(
        [],
        "Host header names to accept besides loopback and --host (e.g. the name a reverse proxy "
        "forwards; '*.example.org' patterns; '*': any)",
        metavar="NAME",
    )
    insecure: bool = _f(False, "allow a non-loopback --host without a token (anyone can call it)")
    redact_paths: bool = _f(False, _REDACT_HELP)
    redact_salt: str = _f("", _SALT_HELP, metavar="SALT")
    backend: Backend = _f("auto", _BACKEND_HELP)
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    lung_model: Path | None = _f(
        None, "lung segmenter run (default: the run's own, if any)", metavar="RUN"
    )
    max_upload_mb: float = _f(32.0, "refuse uploads larger than this many MiB")
    max_pixels: int = _f(40_000_000, "refuse images with more pixels (checked before decoding)")
    allow_modality: list[str] = _f(
        [],
        "DICOM modalities to read besides radiographs CR/DX/DR/RG (e.g. CT; 'all': any)",
        metavar="MODALITY",
    )
    allow_for_processing: bool = _f(
        False, "read DICOMs marked FOR PROCESSING (raw detector data), with a warning"
    )
    decode_timeout_s: float = _f(20.0, "refuse a file whose decoding takes longer (seconds)")
    max_concurrent: int = _f(16, "uploads received or held at once (more get 503 at once)")
    max_decodes: int = _f(2, "images decoded and labelled at once (bounds memory; others wait)")
    body_timeout_s: float = _f(30.0, "an upload must arrive within this many seconds (else 408)")
    header_timeout_s: float = _f(10.0, "a request's headers must arrive within this many seconds")
    keep_alive_s: float = _f(5.0, "close idle keep-alive connections after this many seconds")
    max_connections: int = _f(64, "open connections at once (more get 503)")
    threads: int = _f(0, "CPU threads for inference (0: the library default)")
    dicom_out: Path | None = _f(
        None,
        "per DICOM input, write a DICOM SR (probabilities) and a "
        "Grad-CAM Secondary Capture into this folder",
        metavar="DIR",
    )
    dicom_port: int | None = _f(
        None,
        "also listen for DICOM C-STORE / C-ECHO on this TCP port (results go to --dicom-out)",
        metavar="PORT",
    )
    dicom_aet: str = _f("", "answer only this called AE title (default: any)", metavar="AET")
    dicom_return: str = _f(
        "", "send each SR + SC back by C-STORE to AE@host:port", metavar="AE@HOST:PORT"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = _f(
        "info", "uvicorn log level"
    )

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port: must be between 0 and 65535")
        if self.decode_timeout_s <= 0:
            raise ConfigError("decode_timeout_s: must be positive")
        if self.max_upload_mb <= 0 or self.max_pixels <= 0 or self.max_concurrent < 1:
            raise ConfigError("max_upload_mb/max_pixels/max_concurrent: must be positive")
        if self.max_decodes < 1 or self.max_connections < 1:
            raise ConfigError("max_decodes/max_connections: must be >= 1")
        if min(self.body_timeout_s, self.header_timeout_s, self.keep_alive_s) <= 0:
            raise ConfigError("body_timeout_s/header_timeout_s/keep_alive_s: must be positive")
        if self.threads < 0:
            raise ConfigError("threads: must be >= 0")
        check_token(self.token)
        for name in self.allowed_host:
            if "*" in name[1:] or (name.startswith("*") and name != "*" and name[:2] != "*."):
                raise ConfigError(f"allowed_host: {name!r}: wildcards only as '*' or '*.domain'")
        if self.dicom_port is not None and not 0 <= self.dicom_port <= 65535:
            raise ConfigError("dicom_port: must be between 0 and 65535")
        if (self.dicom_port is not None or self.dicom_return) and self.dicom_out is None:
            raise ConfigError("dicom_port/dicom_return: give --dicom-out DIR for the results")
        if self.dicom_aet and not 0 < len(self.dicom_aet.strip()) <= 16:
            raise ConfigError("dicom_aet: an AE title has 1 to 16 characters")
        if self.dicom_return:
            parse_peer(self.dicom_return)


def parse_peer(text: str) -> tuple[str, str, int]:
    """``AE@host:port`` -> (AE title, host, port); one-line error naming the field."""
    ae, at, address = text.partition("@")
    host, colon, port = address.rpartition(":")
    if not (
        at and colon and ae and host and port.isdigit() and 0 < int(port) <= 65535 and len(ae) <= 16
    ):
        raise ConfigError(f"dicom_return: {text!r} is not AE@host:port (e.g. PACS@10.0.0.5:104)")
    return ae, host.strip("[]"), int(port)
