from __future__ import annotations

import numpy as np
import pytest
import torch

from nnseal.errors import ModelError
from nnseal.models import ModelConfig, build_model, export_onnx, load_model, model_id, save_model
from nnseal.targets import OnnxTarget, TorchTarget

CLASSES = tuple("0123456789")


@pytest.mark.parametrize(
    ("arch", "shape"),
    [("mlp", (1, 8, 8)), ("lenet", (1, 8, 8)), ("lenet", (1, 28, 28)), ("vgg", (3, 32, 32))],
)
def test_architectures_give_logits_and_penultimate(arch: str, shape: tuple[int, int, int]) -> None:
    m = build_model(ModelConfig(arch, shape, CLASSES)).eval()
    x = torch.rand(3, *shape)
    assert m(x).shape == (3, 10)
    torch.testing.assert_close(m.head(m.penultimate(x)), m(x))


def test_unknown_architecture_and_too_small_input() -> None:
    with pytest.raises(ModelError, match="unknown architecture 'resnet9000'"):
        build_model(ModelConfig("resnet9000", (1, 8, 8), CLASSES))
    with pytest.raises(ModelError, match="too small"):
        build_model(ModelConfig("vgg", (3, 4, 4), CLASSES))


def test_save_load_round_trip_keeps_identity(model, tmp_path) -> None:
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert model_id(loaded) == model_id(model)
    assert loaded.config == model.config
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))
    assert not list(tmp_path.glob("*.tmp")), "atomic write left a temporary file"


def test_model_id_changes_with_any_weight(model) -> None:
    other = build_model(model.config)
    other.load_state_dict(model.state_dict())
    assert model_id(other) == model_id(model)
    with torch.no_grad():
        other.features[0].weight[0, 0, 0, 0] += 1e-6
    assert model_id(other) != model_id(model)


def test_model_id_covers_zero_dim_buffers() -> None:
    vgg = build_model(ModelConfig(arch="vgg", input_shape=(1, 28, 28), classes=tuple("0123456789")))
    before = model_id(vgg)  # batch norm's num_batches_tracked is a 0-d tensor
    vgg.features[1].num_batches_tracked += 1
    assert model_id(vgg) != before


def test_bad_model_files_give_clear_errors(model, tmp_path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match=r"not a safetensors model|truncated"):
        load_model(tmp_path / "junk.safetensors")
    good = save_model(model, tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError, match="corrupt"):
        load_model(tmp_path / "cut.safetensors")
    wrong = build_model(ModelConfig("mlp", (1, 8, 8), CLASSES))
    save_model(wrong, tmp_path / "mlp.safetensors")
    raw = (
        (tmp_path / "mlp.safetensors")
        .read_bytes()
        .replace(b'\\"arch\\": \\"mlp\\"', b'\\"arch\\": \\"vgg\\"')
    )
    (tmp_path / "lie.safetensors").write_bytes(raw)
    with pytest.raises(ModelError):
        load_model(tmp_path / "lie.safetensors")


def test_onnx_export_matches_torch(model, tmp_path, digits) -> None:
    path = export_onnx(model, tmp_path / "m.onnx", model.config.input_shape)
    x = digits[1].x[:50]
    p_onnx = OnnxTarget(path).predict(x)
    p_torch = TorchTarget(model).predict(x)
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-5)
    assert (p_onnx.argmax(1) == p_torch.argmax(1)).all()
    assert OnnxTarget(path).predict(x[:1]).shape == (1, 10), "batch axis must be dynamic"
