"""Starting stage 1 from pretrained MAE weights, and refusing unsafe ones."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from raymae.config import ModelConfig
from raymae.model import build_model
from raymae.pretrained import PretrainedError, load_init_weights

CFG = ModelConfig(size="tiny", image_size=32, patch_size=8, depth=2, decoder_depth=1)


def _mae_weights() -> dict:
    return {k: torch.randn_like(v) for k, v in build_model(CFG).state_dict().items()}


def test_an_official_mae_checkpoint_loads_key_for_key(tmp_path):
    weights = _mae_weights()
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": weights, "epoch": 799}, path)  # the official MAE layout
    init = load_init_weights(str(path), CFG)
    assert torch.equal(init.state_dict["blocks.0.attn.qkv.weight"], weights["blocks.0.attn.qkv.weight"])
    assert "pos_embed" not in init.state_dict  # fixed sin-cos, recomputed
    model = build_model(CFG)
    model.load_state_dict(init.state_dict, strict=False)
    assert torch.equal(model.cls_token, weights["cls_token"])


def test_safetensors_weights_load(tmp_path):
    weights = _mae_weights()
    save_file(weights, tmp_path / "mae.safetensors")
    init = load_init_weights(str(tmp_path / "mae.safetensors"), CFG)
    assert torch.equal(init.state_dict["decoder_pred.weight"], weights["decoder_pred.weight"])


def test_tensors_of_another_shape_are_skipped_and_reported(tmp_path):
    other = ModelConfig(size="tiny", image_size=32, patch_size=4, depth=2, decoder_depth=1)
    save_file({k: v.contiguous() for k, v in build_model(other).state_dict().items()},
              tmp_path / "p4.safetensors")
    init = load_init_weights(str(tmp_path / "p4.safetensors"), CFG)
    assert "patch_embed.proj.weight" in init.skipped and "blocks.0.attn.qkv.weight" in init.loaded


class _Exploit:
    def __reduce__(self):
        return (print, ("this ran code",))


def test_a_pickle_with_code_in_it_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Exploit()}, f)
    with pytest.raises(PretrainedError, match="refused"):
        load_init_weights(str(path), CFG)


def test_missing_weights_are_a_clear_error(tmp_path):
    with pytest.raises(PretrainedError, match="not found"):
        load_init_weights(str(tmp_path / "absent.pth"), CFG)
