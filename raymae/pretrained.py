"""Starting stage 1 from pretrained MAE / ViT weights (``raymae train --init``).

Accepted:
* a ``.safetensors`` file (local or ``s3://``);
* an official MAE checkpoint (``.pth``: ``{"model": state_dict}``), read with
  ``torch.load(weights_only=True)`` so a pickle carrying code is refused;
* a timm model name (e.g. ``vit_base_patch16_224.mae``) where a model hub is reachable.

Keys are matched by name (raymae uses MAE's names); the fixed sin-cos position
embeddings are always recomputed, and tensors whose shape differs from the
configured model (another patch size, say) are skipped and reported.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors

from raymae import storage
from raymae.config import ModelConfig
from raymae.model import build_model

FIXED_KEYS = ("pos_embed", "decoder_pos_embed")


class PretrainedError(ValueError):
    """Weights that cannot be used as a starting point."""


@dataclass
class InitWeights:
    state_dict: dict[str, torch.Tensor]
    source: str
    loaded: list[str]
    skipped: list[str]


def read_state_dict(spec: str) -> dict[str, torch.Tensor]:
    """Raw tensors of a checkpoint file or timm model name."""
    if spec.endswith(".safetensors"):
        return load_safetensors(_read(spec))
    if spec.endswith((".pth", ".pt", ".bin", ".ckpt")):
        try:
            ckpt = torch.load(io.BytesIO(_read(spec)), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise PretrainedError(
                f"refused to load {spec!r}: it is not a plain weights file (a pickle with code in it "
                f"cannot be loaded safely); convert it to safetensors") from e
        for key in ("model", "state_dict"):
            if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
        if not isinstance(ckpt, dict):
            raise PretrainedError(f"{spec!r} holds no state dict")
        return ckpt
    return _timm_state_dict(spec)


def _read(spec: str) -> bytes:
    try:
        return storage.read_bytes(spec)
    except FileNotFoundError as e:
        raise PretrainedError(f"pretrained weights not found: {spec!r}") from e


def _timm_state_dict(name: str) -> dict[str, torch.Tensor]:
    import timm

    if name not in timm.list_pretrained() and name not in timm.list_models():
        raise PretrainedError(f"{name!r} is neither a weights file (.safetensors/.pth) nor a timm model name")
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as e:  # no hub reachable, no weights for that name
        raise PretrainedError(f"could not fetch timm weights {name!r}: {e}; "
                              f"download them elsewhere and pass the file") from e


def load_init_weights(spec: str, model_cfg: ModelConfig) -> InitWeights:
    """Tensors of ``spec`` that fit a stage-1 model of ``model_cfg``."""
    raw = {k.removeprefix("module."): v for k, v in read_state_dict(spec).items()}
    target = build_model(model_cfg, stage2=False).state_dict()
    keep, skipped = {}, []
    for key, value in raw.items():
        if key in FIXED_KEYS:
            continue
        if key in target and tuple(target[key].shape) == tuple(value.shape):
            keep[key] = value.float()
        else:
            skipped.append(key)
    if not keep:
        raise PretrainedError(f"no tensor of {spec!r} fits a {model_cfg.size} MAE at "
                              f"{model_cfg.image_size}px/patch {model_cfg.patch_size}")
    return InitWeights(keep, spec, sorted(keep), sorted(skipped))
