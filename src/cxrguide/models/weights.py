"""Weight files on disk: where they are looked for, how they are read, how they are labelled.

What ``--weights`` means is parsed once (:class:`cxrguide.config.weights.WeightsSpec`); building a
body from a spec is :func:`cxrguide.models.imagenet.create_timm_body` (ImageNet lookup order,
packaged weights, pinned hub downloads); ``docs/weights.md`` is the user's account. Here:

- local lookup: a folder (the ``weights_dir`` argument or ``$CXRGUIDE_WEIGHTS_DIR``) holding one
  of (``NAME`` is the pinned timm name, e.g. ``tf_efficientnet_b0.aa_in1k``)
  ``NAME.safetensors`` | ``NAME.pth`` | ``NAME.pt`` | ``NAME.bin`` | ``NAME/model.safetensors`` |
  ``NAME/pytorch_model.bin`` (what ``hf download timm/NAME --local-dir DIR/NAME`` writes) | the
  file name of the weight URL timm lists (torch-hub style, e.g.
  ``mobilenetv2_100_ra-b33bc2c4.pth``) | a Hugging Face cache tree
  (``models--timm--NAME/snapshots/...``); then the usual caches (Hugging Face hub, torch hub);
- labels: ``file:<path>``, or ``phantom:<sha256 of the file>`` for a body ``cxrguide pretrain``
  trained on clean phantoms (marked in its safetensors metadata), however it is named; the
  phantom weight cache (:func:`weight_cache_dir`) and its SHA-256 card check;
- strict loading: with timm's 1000-class head first (timm's own loader drops strictness whenever
  the class count differs, which would let a wrong file load silently), then, for headless
  files, strictly into the headless model. A file that fits neither is an error, so a model is
  never labelled pretrained while its weights are random.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from safetensors import safe_open
from torch import nn

from cxrguide.errors import CxrGuideError
from cxrguide.files import user_cache_dir

WEIGHTS_ENV = "CXRGUIDE_WEIGHTS_DIR"
OFFLINE_ENV = "CXRGUIDE_OFFLINE"
PHANTOM = "phantom"
PHANTOM_META_KEY = "cxrguide_body"  # safetensors metadata marking a phantom-trained body
_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub repos hold


def configured_weights_dir(weights_dir: str | Path | None = None) -> Path | None:
    """The local weight folder: the argument, else ``$CXRGUIDE_WEIGHTS_DIR``, else None."""
    if weights_dir:
        return Path(weights_dir).expanduser()
    env = os.environ.get(WEIGHTS_ENV, "").strip()
    return Path(env).expanduser() if env else None


def weight_cache_dir() -> Path:
    """Where phantom bodies live: ``$CXRGUIDE_WEIGHTS_DIR``, else the user cache folder
    (``$XDG_CACHE_HOME/cxrguide/weights``, by default ``~/.cache/cxrguide/weights``)."""
    folder = configured_weights_dir()
    if folder is not None:
        return folder
    return user_cache_dir() / "weights"


def offline() -> bool:
    """``$CXRGUIDE_OFFLINE`` set to 1/true/yes: use only files on disk (no download, no build)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def phantom_body_file(backbone: str, folder: Path | None = None) -> Path:
    """The phantom body of ``backbone`` (short zoo name) in ``folder`` (default: the cache)."""
    return (folder or weight_cache_dir()) / f"phantom-{backbone}.safetensors"


def phantom_card_file(body: Path) -> Path:
    """The JSON model card beside a body file (holds its SHA-256)."""
    return body.with_suffix(".json")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_phantom_body(body: Path) -> str:
    """The body's SHA-256 if it matches its card; CxrGuideError naming what is wrong otherwise."""
    card = phantom_card_file(body)
    if not body.is_file() or not card.is_file():
        raise CxrGuideError(f"{body}: no phantom body here (with its card {card.name})")
    try:
        want = json.loads(card.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CxrGuideError(f"{card}: unreadable model card ({type(err).__name__})") from err
    got = file_sha256(body)
    if got != want:
        raise CxrGuideError(f"{body}: SHA-256 {got[:12]}... differs from its card's {want[:12]}...")
    return got


def weights_label(path: Path) -> str:
    """``phantom:<sha256>`` for a file marked as a phantom body, else ``file:<path>``."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
        except Exception:  # unreadable files fail later with read_state_dict's one-line error
            meta = {}
        if meta.get(PHANTOM_META_KEY) == PHANTOM:
            return f"{PHANTOM}:{file_sha256(path)}"
    return f"file:{path}"


def pretrained_cfg(timm_name: str) -> Any:
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        raise CxrGuideError(f"timm has no pretrained configuration for {timm_name!r}")
    return cfg


def local_candidates(timm_name: str) -> list[str]:
    """File names (relative to the weight folder) accepted for ``timm_name``, in lookup order."""
    names = [timm_name + s for s in _SUFFIXES] + [f"{timm_name}/{f}" for f in HUB_FILES]
    url = pretrained_cfg(timm_name).url
    if url:
        names.append(Path(urlparse(url).path).name)
    return names


def _hub_cache_lookup(
    repo_id: str | None, cache_dir: Path | None = None, revision: str | None = None
) -> Path | None:
    if not repo_id:
        return None

    for filename in HUB_FILES:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def find_local_weights(timm_name: str, folder: Path) -> Path | None:
    """The first accepted weight file for ``timm_name`` in ``folder``, or None."""
    for rel in local_candidates(timm_name):
        path = folder / rel
        if path.is_file():
            return path
    if folder.is_dir():
        return _hub_cache_lookup(pretrained_cfg(timm_name).hf_hub_id, cache_dir=folder)
    return None


def find_cached_weights(timm_name: str, revision: str | None = None) -> Path | None:
    """The weight file already in the Hugging Face (at ``revision``, default the cached ``main``)
    or torch hub cache, or None (no network). A pinned revision is looked up on the hub only."""
    cfg = pretrained_cfg(timm_name)
    found = _hub_cache_lookup(cfg.hf_hub_id, revision=revision)
    if found is None and cfg.url and revision is None:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        found = path if path.is_file() else None
    return found


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors``/``.pth`` file (nested ``state_dict``/``model`` unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise CxrGuideError(f"{path}: weight file not found")
    try:
        state = timm.models.load_state_dict(str(path), use_ema=False)
    except Exception as err:  # pickle, safetensors and zip errors have no common base class
        raise CxrGuideError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CxrGuideError(f"{path}: holds no tensors, not a weight file")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def is_classifier_checkpoint(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for a whole :class:`CxrClassifier` state dict (``body.*`` and ``head.*`` keys)."""
    keys = state_dict.keys()
    return any(k.startswith("body.") for k in keys) and any(k.startswith("head.") for k in keys)


def short_error(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 240 else text[:237] + "..."


def strip_to_body(model: nn.Module) -> nn.Module:
    """Drop everything after the last conv map: classifier, and VGG's 4096-wide fc6/fc7."""
    model.reset_classifier(0)
    if hasattr(model, "pre_logits") and type(model).__name__ == "VGG":
        model.pre_logits = nn.Identity()
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        cfg.pop("state_dict", None)  # do not keep a second copy of the weights alive
    return model


def load_timm_body(
    timm_name: str, state_dict: dict[str, torch.Tensor], origin: str, **timm_kwargs: Any
) -> nn.Module:
    """Build ``timm_name`` with ``state_dict`` loaded strictly; ``origin`` names it in errors."""
    try:
        model = timm.create_model(
            timm_name,
            pretrained=True,
            pretrained_cfg_overlay={"state_dict": dict(state_dict), "file": None},
            **timm_kwargs,
        )
    except (RuntimeError, KeyError, ValueError) as with_head:
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, **timm_kwargs)
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as headless:
            classifier = pretrained_cfg(timm_name).classifier or "head"
            has_head = any(k.startswith(str(classifier)) for k in state_dict)
            reason = short_error(with_head if has_head else headless)
            raise CxrGuideError(f"{origin}: does not fit {timm_name} ({reason})") from headless
    return strip_to_body(model)
