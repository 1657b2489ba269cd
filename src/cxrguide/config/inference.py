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
CAM_METHODS: dict[str, str] = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++",
                               "xgradcam": "XGrad-CAM", "hirescam": "HiRes-CAM",
                               "layercam": "Layer-CAM", "eigencam": "Eigen-CAM"}  # fmt: skip
SLOW_CAM_METHODS: dict[str, str] = {"scorecam": "Score-CAM"}
CamMethod = Literal[tuple(CAM_METHODS)]  # type: ignore[valid-type]  # the names as a type


@dataclasses.dataclass
class PredictConfig:
    """`cxrguide predict RUN INPUT...`: labels for new PNG/JPEG/DICOM files or folders."""

    run: Path | None = _f(None, "run folder written by 'cxrguide train'", metavar="RUN")
    inputs: list[str] = _f([], "image files or folders (folders are searched recursively)")
    format: Literal["table", "json", "csv"] = _f("table", "output format (--json, --csv)")
    output: Path | None = _f(None, "write the results here instead of stdout", metavar="FILE")
    cam: Path | None = _f(None, "write Grad-CAM overlay PNGs into this folder", metavar="DIR")
    cam_method: CamMethod = _f("gradcam", "CAM method for --cam")
    batch_size: int = _f(16, "images per forward pass")
    backend: Backend = _f("auto", _BACKEND_HELP)
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    lung_model: Path | None = _f(None, "lung segmenter run (default: the run's own, if any)", metavar="RUN")  # fmt: skip
    max_pixels: int = _f(64_000_000, "refuse images with more pixels (decompression-bomb guard)")
    allow_modality: list[str] = _f(
        [],
        "DICOM modalities to read besides radiographs CR/DX/DR (e.g. CT; 'all': any)",
        metavar="MODALITY",
    )
    threads: int = _f(0, "CPU threads for inference (0: the library default)")
    progress: bool = _f(True, "show a progress bar on stderr")

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("batch_size: must be >= 1")
        if self.max_pixels <= 0 or self.threads < 0:
            raise ConfigError("max_pixels/threads: max_pixels must be > 0, threads >= 0")


@dataclasses.dataclass
class ExportConfig:
    """`cxrguide export RUN --format onnx|torchscript --out FILE`: a portable classifier file."""

    run: Path | None = _f(None, "run folder written by 'cxrguide train'", metavar="RUN")
    format: Literal["onnx", "torchscript"] = _f("onnx", "file format")
    out: Path | None = _f(None, "output file (.onnx or .pt)", metavar="FILE")
    opset: int = _f(18, "ONNX opset version (18-23: what the torch.export based exporter writes)")
    check: bool = _f(True, "check the file against PyTorch (probabilities within 1e-4)")
    int8: bool = _f(False, "static INT8 (QDQ, per-channel) calibrated on the run's validation films")
    calibration_films: int = _f(64, "validation films used to calibrate --int8")
    min_agreement: float = _f(0.99, "refuse --int8 below this top-1 agreement with fp32")
    seed: int = _f(0, "seed choosing the calibration films")

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
    backend: Backend = _f("auto", _BACKEND_HELP)
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    lung_model: Path | None = _f(None, "lung segmenter run (default: the run's own, if any)", metavar="RUN")  # fmt: skip
    max_upload_mb: float = _f(32.0, "refuse uploads larger than this many MiB")
    max_pixels: int = _f(40_000_000, "refuse images with more pixels (checked before decoding)")
    allow_modality: list[str] = _f(
        [],
        "DICOM modalities to read besides radiographs CR/DX/DR (e.g. CT; 'all': any)",
        metavar="MODALITY",
    )
    max_concurrent: int = _f(16, "uploads received or held at once (more get 503 at once)")
    max_decodes: int = _f(2, "images decoded and labelled at once (bounds memory; others wait)")
    body_timeout_s: float = _f(30.0, "an upload must arrive within this many seconds (else 408)")
    header_timeout_s: float = _f(10.0, "a request's headers must arrive within this many seconds")
    keep_alive_s: float = _f(5.0, "close idle keep-alive connections after this many seconds")
    max_connections: int = _f(64, "open connections at once (more get 503)")
    threads: int = _f(0, "CPU threads for inference (0: the library default)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = _f("info", "uvicorn log level")  # fmt: skip

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("port: must be between 0 and 65535")
        if self.max_upload_mb <= 0 or self.max_pixels <= 0 or self.max_concurrent < 1:
            raise ConfigError("max_upload_mb/max_pixels/max_concurrent: must be positive")
        if self.max_decodes < 1 or self.max_connections < 1:
            raise ConfigError("max_decodes/max_connections: must be >= 1")
        if min(self.body_timeout_s, self.header_timeout_s, self.keep_alive_s) <= 0:
            raise ConfigError("body_timeout_s/header_timeout_s/keep_alive_s: must be positive")
        if self.threads < 0:
            raise ConfigError("threads: must be >= 0")
