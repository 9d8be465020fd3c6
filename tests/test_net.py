"""Network construction and initialisation options."""
import pytest
import torch
from torchvision.models import resnet50

from model import ConfigError
from model.net import build_model, check_init


def test_single_logit_head():
    model = build_model("scratch")
    assert model.fc.out_features == 1
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1)


def test_init_from_state_dict_path(tmp_path):
    ref = resnet50(num_classes=1000)
    torch.save(ref.state_dict(), tmp_path / "r50.pt")
    model = build_model(str(tmp_path / "r50.pt"))
    assert torch.equal(model.conv1.weight, ref.conv1.weight)
    assert model.fc.out_features == 1


def test_init_rejects_wrong_state_dict(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="does not fit ResNet-50"):
        build_model(str(tmp_path / "bad.pt"))


def test_init_rejects_unknown_value():
    with pytest.raises(ConfigError, match="not 'scratch', 'imagenet'"):
        check_init("imagenette")
