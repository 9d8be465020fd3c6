"""Network construction and initialisation options."""

import pytest
import torch
from torchvision.models import resnet50

from vocfleet.model import ConfigError
from vocfleet.model.config import check_init
from vocfleet.model.net import bf16_training, build_model, detector_model, inference_model, training_autocast


def test_single_logit_head():
    model = build_model("scratch")
    assert model.fc.out_features == 1
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1)


def test_lowres_stem_keeps_resnet50_weights_and_a_larger_map(tmp_path):
    plain, low = build_model("scratch"), build_model("scratch", arch="resnet50-lowres")
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in low.state_dict().items()}
    maps = {}
    for name, model in (("plain", plain), ("low", low)):
        model.layer4.register_forward_hook(lambda _m, _i, out, name=name: maps.__setitem__(name, out.shape[-2:]))
        model.eval()(torch.zeros(1, 3, 64, 64))
    assert (maps["plain"], maps["low"]) == ((2, 2), (4, 4))
    torch.save(plain.state_dict(), tmp_path / "r50.pt")  # a ResNet-50 file starts either
    assert torch.equal(build_model(str(tmp_path / "r50.pt"), arch="resnet50-lowres").conv1.weight, plain.conv1.weight)
    saved = {"model": low.state_dict(), "config": {"arch": "resnet50-lowres"}}
    assert isinstance(detector_model(saved).maxpool, torch.nn.Identity)  # scoring rebuilds the stem it was trained with


def test_init_from_state_dict_path(tmp_path):
    ref = resnet50(num_classes=1000)
    torch.save(ref.state_dict(), tmp_path / "r50.pt")
    model = build_model(str(tmp_path / "r50.pt"))
    assert torch.equal(model.conv1.weight, ref.conv1.weight)
    assert model.fc.out_features == 1


def test_init_rejects_wrong_state_dict(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="does not fit --arch resnet50"):
        build_model(str(tmp_path / "bad.pt"))


def test_init_rejects_unknown_value():
    with pytest.raises(ConfigError, match="not 'scratch', 'imagenet'"):
        check_init("imagenette")


def test_inference_model_folds_batch_norm_without_changing_outputs():
    torch.manual_seed(0)
    model = build_model("scratch")
    model.train()
    with torch.no_grad():  # non-trivial running statistics, as after training
        for _ in range(3):
            model(torch.randn(8, 3, 64, 64))
    model.eval()
    fast = inference_model(model, torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, got = model(x), fast(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_training_uses_bfloat16_on_a_cpu_only_where_it_is_native(monkeypatch):
    cpu = torch.device("cpu")
    for avx512_bf16, amx, expected in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert bf16_training(cpu) is expected
        with training_autocast(cpu):
            y = torch.nn.Linear(4, 2)(torch.ones(3, 4))
        assert y.dtype == (torch.bfloat16 if expected else torch.float32)
        for asked in (False, True):  # asked for outright (the benchmark's float32 side), the flags do not matter
            with training_autocast(cpu, asked):
                assert torch.nn.Linear(4, 2)(torch.ones(3, 4)).dtype == (torch.bfloat16 if asked else torch.float32)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # a torch without the checks: float32
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert bf16_training(cpu) is False
    assert bf16_training(torch.device("cuda")) is True and bf16_training(torch.device("meta")) is False
