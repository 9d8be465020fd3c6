"""Batch augmentation on tensors and the shared eval preprocessing."""
import torch

from model.augment import NoAugment, TrainAugment, preprocess_eval


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8, generator=g)


def test_eval_preprocess_shape_and_normalisation():
    x = preprocess_eval(torch.full((2, 8, 8, 3), 255, dtype=torch.uint8))
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.tensor((1 - 0.485) / 0.229))


def test_train_augment_is_seeded_and_per_sample():
    aug = TrainAugment()
    b = _batch()
    a1 = aug(b, torch.Generator().manual_seed(1))
    a2 = aug(b, torch.Generator().manual_seed(1))
    a3 = aug(b, torch.Generator().manual_seed(2))
    assert a1.shape == (6, 3, 32, 32)
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    assert not torch.allclose(a1, preprocess_eval(b))


def test_identity_when_ranges_are_zero():
    aug = TrainAugment(scale=(1.0, 1.0), max_degrees=0.0, hflip=0.0)
    b = _batch()
    assert torch.allclose(aug(b, torch.Generator().manual_seed(0)), preprocess_eval(b), atol=1e-5)


def test_flip_only_mirrors():
    aug = TrainAugment(scale=(1.0, 1.0), max_degrees=0.0, hflip=1.0)
    b = _batch()
    assert torch.allclose(aug(b, torch.Generator().manual_seed(0)), preprocess_eval(b).flip(-1), atol=1e-5)


def test_no_augment_is_eval_preprocessing():
    b = _batch()
    assert torch.equal(NoAugment()(b), preprocess_eval(b))


def test_eval_preprocess_matches_torchvision_reference():
    """The fused uint8 -> normalised path gives what ToTensor + Normalize give (the origin's preprocessing)."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms as T

    from model.augment import IMAGENET_MEAN, IMAGENET_STD

    b = _batch()
    ref = torch.stack([T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(Image.fromarray(np.asarray(im)))) for im in b])
    assert torch.allclose(preprocess_eval(b), ref, atol=1e-5)
