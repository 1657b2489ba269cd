from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from cxr_testutils import make_prepared, write_lung_cache
from cxrguide.cli import main
from cxrguide.data.datasets import CxrDataset, Prepared
from cxrguide.data.transforms import resize_mask
from cxrguide.errors import CxrGuideError
from cxrguide.evaluation.evaluate import predict_split
from cxrguide.evaluation.external_onnx import evaluate_onnx
from cxrguide.evaluation.external_onnx_input import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    parse_classes,
    resolve_input,
)
from cxrguide.inference.export import ExportModule, export_onnx
from cxrguide.labels import CLASSES
from cxrguide.models.zoo import create_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]
SIZE = 64
PROBS = [f"p_{c}" for c in CLASSES]


class NhwcRgbWrapper(nn.Module):
    """NHWC, 3-channel, ImageNet-normalised input; probabilities in COVID-19, Normal, Pneumonia."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 1, 3))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 1, 1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x * self.std + self.mean
        gray = rgb.mean(dim=3, keepdim=True).permute(0, 3, 1, 2)
        p = torch.softmax(self.model(gray), dim=1)
        return p[:, [2, 0, 1]]


def _export(module: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool) -> Path:
    axes = {"image": {0: "batch"}, "out": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(
        module.eval(),
        (example,),
        str(path),
        input_names=["image"],
        output_names=["out"],
        dynamic_axes=axes,
        dynamo=False,
    )
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    prep = make_prepared(root / "prep", size=SIZE)
    model = create_model("mobilenet_v2", "none", seed=0).eval()
    nchw = _export(model, torch.rand(2, 1, SIZE, SIZE), root / "mnv2.onnx", dynamic_batch=True)
    # fixed batch of 4: the 6 test images go in as 4 + 2 padded
    nhwc = _export(
        NhwcRgbWrapper(model), torch.rand(4, SIZE, SIZE, 3), root / "nhwc.onnx", dynamic_batch=False
    )
    prepared = Prepared.open(prep)
    dataset = CxrDataset(prepared, "test", image_size=SIZE)
    probs, rows = predict_split(model, dataset, torch.device("cpu"), batch_size=4, progress=False)
    return {
        "root": root,
        "prep": prep,
        "nchw": nchw,
        "nhwc": nhwc,
        "torch_probs": probs,
        "rows": rows,
        "prepared": prepared,
    }


def _probs(out: Path, split: str = "test") -> pd.DataFrame:
    return pd.read_csv(out / f"predictions_{split}.csv")


def test_cli_onnx_matches_pytorch_and_writes_metrics(setup, capsys):
    code = main(
        [
            "evaluate",
            "--onnx",
            str(setup["nchw"]),
            "--data",
            str(setup["prep"]),
            "--bootstrap",
            "20",
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = setup["root"] / "mnv2_eval"  # default: <stem>_eval beside the model
    table = _probs(out)
    manifest = setup["prepared"].manifest
    assert list(table.image_id) == list(manifest.image_id.iloc[setup["rows"]])
    np.testing.assert_allclose(table[PROBS].to_numpy(), setup["torch_probs"], atol=1e-4)
    metrics = json.loads((out / "metrics_test.json").read_text())
    assert metrics["n"] == len(setup["rows"]) == 6
    assert 0 <= metrics["accuracy"] <= 1 and metrics["macro_auc"] is not None
    assert metrics["onnx"]["layout"] == "nchw" and metrics["onnx"]["channels"] == 1
    assert metrics["onnx"]["output_kind"] == "logits"
    expected_acc = float(
        (
            setup["torch_probs"].argmax(1)
            == table.true.map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
        ).mean()
    )
    assert metrics["accuracy"] == pytest.approx(expected_acc)
    assert "accuracy" in capsys.readouterr().out


def test_nhwc_rgb_probability_model_with_fixed_batch_and_class_order(setup, tmp_path):
    report = evaluate_onnx(
        setup["nhwc"],
        setup["prep"],
        "test",
        tmp_path / "o",
        normalize="imagenet",
        classes="COVID-19,Normal,Pneumonia",
        n_boot=10,
        progress=False,
    )
    feed = report["onnx"]
    assert (feed["layout"], feed["channels"], feed["height"], feed["batch"]) == ("nhwc", 3, 64, 4)
    assert feed["output_kind"] == "probabilities"  # no second softmax
    np.testing.assert_allclose(
        _probs(tmp_path / "o")[PROBS].to_numpy(), setup["torch_probs"], atol=1e-4
    )
    # a wrong class order is visible: the columns come out permuted
    evaluate_onnx(
        setup["nhwc"],
        setup["prep"],
        "test",
        tmp_path / "w",
        normalize="imagenet",
        n_boot=10,
        progress=False,
    )
    wrong = _probs(tmp_path / "w")[PROBS].to_numpy()
    np.testing.assert_allclose(wrong, setup["torch_probs"][:, [2, 0, 1]], atol=1e-4)


def test_bad_file_is_one_line_exit_2(setup, tmp_path, capsys):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    code = main(["evaluate", "--onnx", str(bad), "--data", str(setup["prep"])])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "broken.onnx" in err and "not a valid ONNX model" in err


def _graph_model(path: Path, inputs: list[tuple[str, list]], out_shape: list, op: str) -> Path:
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    nodes = [helper.make_node(op, [inputs[0][0]], ["y"])]
    graph = helper.make_graph(nodes, "g", ins, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def test_graph_without_one_image_input_or_3_wide_output(setup, tmp_path, capsys):
    flat = _graph_model(tmp_path / "flat.onnx", [("x", ["N", 3, 8, 8])], ["N", 192], "Flatten")
    with pytest.raises(CxrGuideError, match=r"flat\.onnx: no 3-wide"):
        evaluate_onnx(flat, setup["prep"], progress=False)
    two = _graph_model(
        tmp_path / "two.onnx", [("a", ["N", 3, 8, 8]), ("b", ["N", 3, 8, 8])], ["N", 192], "Flatten"
    )
    assert main(["evaluate", "--onnx", str(two), "--data", str(setup["prep"])]) == 2
    assert "2 inputs (a, b)" in capsys.readouterr().err


def test_pooling_graph_with_dynamic_size_uses_override(setup, tmp_path):
    # mean over H, W of a 3-channel image: dynamic spatial dims, 3 channels, probabilities-free
    gap = _graph_model(
        tmp_path / "gap.onnx", [("x", ["N", 3, "H", "W"])], ["N", 3, 1, 1], "GlobalAveragePool"
    )
    with pytest.raises(CxrGuideError, match="no 3-wide"):
        evaluate_onnx(gap, setup["prep"], progress=False)  # rank-4 output is not (batch, 3)
    report = evaluate_onnx(
        gap, setup["prep"], "test", tmp_path / "g", size=32, output="y", n_boot=5, progress=False
    )
    assert (report["onnx"]["height"], report["onnx"]["width"]) == (32, 32)
    probs = _probs(tmp_path / "g")[PROBS].to_numpy()
    assert np.allclose(probs, 1 / 3, atol=1e-6)  # equal channel means -> uniform softmax


def test_resolve_input_rules():
    kw = dict(size=None, layout=None, channels=None, normalize="none", default_size=100)
    p = Path("m.onnx")
    a = resolve_input(p, "x", [1, 480, 480, 3], "tensor(float)", **kw)
    assert (a.layout, a.channels, a.height, a.width, a.batch) == ("nhwc", 3, 480, 480, 1)
    b = resolve_input(p, "x", ["N", "C", "H", "W"], "tensor(float)", **kw)
    assert (b.layout, b.channels, b.height, b.batch) == ("nchw", 3, 100, None)
    c = resolve_input(p, "x", ["N", 240, 240, "C"], "tensor(float16)", **{**kw, "channels": 1})
    assert (c.layout, c.channels, c.height, c.dtype) == ("nhwc", 1, 240, "float16")
    with pytest.raises(CxrGuideError, match="fixes input size 480x480, not 224"):
        resolve_input(p, "x", [1, 480, 480, 3], "tensor(float)", **{**kw, "size": 224})
    with pytest.raises(CxrGuideError, match="fixes 3 input channels"):
        resolve_input(p, "x", [1, 3, 224, 224], "tensor(float)", **{**kw, "channels": 1})
    with pytest.raises(CxrGuideError, match="ambiguous"):
        resolve_input(p, "x", [1, 3, 8, 3], "tensor(float)", **kw)
    with pytest.raises(CxrGuideError, match="channel axis"):
        resolve_input(p, "x", [1, 3, 224, 224], "tensor(float)", **{**kw, "layout": "nhwc"})
    with pytest.raises(CxrGuideError, match="tensor\\(uint8\\)"):
        resolve_input(p, "x", [1, 3, 224, 224], "tensor(uint8)", **kw)


def test_parse_classes():
    assert parse_classes("normal, pneumonia ,COVID-19") == CLASSES
    assert parse_classes("covid19,Normal,Pneumonia") == ("COVID-19", "Normal", "Pneumonia")
    with pytest.raises(CxrGuideError, match="need each"):
        parse_classes("normal,normal,covid")
    with pytest.raises(CxrGuideError, match="unknown class 'tb'"):
        parse_classes("normal,tb,covid")


def test_exactly_one_of_run_or_onnx(setup, tmp_path, capsys):
    assert main(["evaluate"]) == 2
    assert "exactly one of RUN or --onnx" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--onnx", str(setup["nchw"])]) == 2
    assert main(["evaluate", "--onnx", str(setup["nchw"])]) == 2  # no --data
    assert "--data" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--onnx-size", "64"]) == 2
    assert "--onnx-size" in capsys.readouterr().err


GATED = 48  # the export's side: the 64 px cache and its lung masks are resized to it


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A gated (image + lung_mask) export as `cxrguide export` writes it for Stage III runs."""
    root = tmp_path_factory.mktemp("gated")
    prep = make_prepared(root / "prep", size=SIZE)
    masks = write_lung_cache(prep, size=SIZE)
    model = create_model("mobilenet_v2", "none", seed=0).eval()
    path = export_onnx(
        ExportModule(model, GATED, lung_gate=True).eval(), root / "stage3.onnx", GATED
    )
    prepared = Prepared.open(prep)
    dataset = CxrDataset(prepared, "test", image_size=GATED)
    image = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    lung = resize_mask(torch.from_numpy(masks[dataset.rows] / 255.0).float()[:, None], GATED)
    with torch.no_grad():
        expected = torch.softmax(model(image, lung), 1).numpy()
        ungated = torch.softmax(model(image), 1).numpy()
    return {
        "root": root,
        "prep": prep,
        "onnx": path,
        "expected": expected,
        "ungated": ungated,
        "ids": list(prepared.manifest.image_id.iloc[dataset.rows]),
    }


def test_gated_export_is_fed_the_lung_cache(gated, capsys):
    out = gated["root"] / "eval"
    code = main(
        [
            "evaluate",
            "--onnx",
            str(gated["onnx"]),
            "--data",
            str(gated["prep"]),
            "--out",
            str(out),
            "--bootstrap",
            "10",
        ]
    )
    assert code == 0, capsys.readouterr().err
    table = _probs(out)
    assert list(table.image_id) == gated["ids"]
    np.testing.assert_allclose(table[PROBS].to_numpy(), gated["expected"], atol=1e-4)
    assert np.abs(gated["expected"] - gated["ungated"]).max() > 1e-5  # the mask matters
    feed = json.loads((out / "metrics_test.json").read_text())["onnx"]
    assert (feed["layout"], feed["channels"], feed["height"]) == ("nchw", 1, GATED)
    assert feed["lung_mask_input"] == "lung_mask" and feed["output"] == "probabilities"
    assert feed["lung_masks"].endswith(f"lungs_{SIZE}.npy")
    assert "lung masks ('lung_mask')" in capsys.readouterr().out


def test_gated_export_on_a_set_without_lung_masks_is_one_line_exit_2(gated, setup, capsys):
    code = main(
        [
            "evaluate",
            "--onnx",
            str(gated["onnx"]),
            "--data",
            str(setup["prep"]),
            "--out",
            str(gated["root"] / "none"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"lungs_{SIZE}.npy: no lung masks" in err and "stage3.onnx" in err
    assert not (gated["root"] / "none" / "metrics_test.json").exists()


class CovidNetSignature(nn.Module):
    """The official COVID-Net CXR3/CXR4 signature with fixed weights that read the test set.

    NHWC 480x480x3 in [0, 1] -> softmax over (normal, pneumonia, COVID-19): each class's logit is
    the mean brightness around where :func:`make_prepared` draws that class's blob.
    """

    SIDE = 480

    def __init__(self) -> None:
        super().__init__()
        yy, xx = torch.meshgrid(
            torch.arange(self.SIDE) / self.SIDE, torch.arange(self.SIDE) / self.SIDE, indexing="ij"
        )
        regions = []
        for k in range(3):
            cy, cx = 0.3 + 0.2 * k, 0.35 + 0.15 * k
            box = ((yy - cy).abs() <= 0.1) & ((xx - cx).abs() <= 0.1)
            regions.append(box.float().flatten() / box.sum())
        self.register_buffer("regions", torch.stack(regions).T.contiguous())  # (H*W, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = x.mean(dim=3).flatten(1)
        return torch.softmax(20 * gray @ self.regions, dim=1)


def _readme_covidnet_command() -> list[str]:
    page = Path(__file__).resolve().parents[2] / "docs" / "inference.md"
    text = page.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.startswith("cxrguide evaluate --onnx COVIDNet")]
    assert len(lines) == 1, "docs/inference.md: the COVID-Net evaluate --onnx example"
    return shlex.split(lines[0])[1:]


def test_covidnet_signature_scored_by_the_readme_command(setup, tmp_path, capsys):
    model = CovidNetSignature().eval()
    side = CovidNetSignature.SIDE
    path = tmp_path / "COVIDNet-CXR4-A.onnx"
    torch.onnx.export(
        model,
        (torch.rand(2, side, side, 3),),
        str(path),
        input_names=["input_1:0"],
        output_names=["norm_dense_1/Softmax:0"],
        dynamic_axes={"input_1:0": {0: "N"}, "norm_dense_1/Softmax:0": {0: "N"}},
        dynamo=False,
    )
    readme = _readme_covidnet_command()

    def argv(out: str, swap: dict[str, str] | None = None) -> list[str]:
        swap = (swap or {}) | {
            "COVIDNet-CXR4-A.onnx": str(path),
            "prepared": str(setup["prep"]),
            "covidnet-cxr4a_eval": str(tmp_path / out),
        }
        return [swap.get(a, a) for a in readme] + ["--bootstrap", "20"]

    assert main(argv("eval")) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "eval" / "metrics_test.json").read_text())
    feed = report["onnx"]
    assert (feed["name"], feed["layout"], feed["channels"], feed["height"], feed["width"]) == (
        "input_1:0",
        "nhwc",
        3,
        side,
        side,
    )
    assert (feed["output"], feed["output_kind"]) == ("norm_dense_1/Softmax:0", "probabilities")
    assert report["n"] == 6 and report["accuracy"] == 1.0  # the blobs are read in the right order
    # the reference: the same images, resized by torch here, through the PyTorch model
    dataset = CxrDataset(setup["prepared"], "test", image_size=SIZE)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    nhwc = torch.nn.functional.interpolate(
        images, size=(side, side), mode="bilinear", align_corners=False
    )  # enlarging: the rule's bilinear
    with torch.no_grad():
        expected = model(nhwc.expand(-1, 3, -1, -1).permute(0, 2, 3, 1)).numpy()
    np.testing.assert_allclose(_probs(tmp_path / "eval")[PROBS].to_numpy(), expected, atol=1e-4)
    # a wrong --onnx-classes order is visible in the figures, not silently absorbed
    wrong = {"normal,pneumonia,COVID-19": "COVID-19,normal,pneumonia"}
    assert main(argv("w", wrong)) == 0
    assert json.loads((tmp_path / "w" / "metrics_test.json").read_text())["accuracy"] == 0.0
