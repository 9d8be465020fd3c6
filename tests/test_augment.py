"""Batch augmentation on tensors and the shared eval preprocessing."""

import torch

from vocfleet.model.augment import NoAugment, TrainAugment, preprocess_eval


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

    from vocfleet.model.augment import IMAGENET_MEAN, IMAGENET_STD

    b = _batch()
    ref = torch.stack([T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(Image.fromarray(np.asarray(im)))) for im in b])
    assert torch.allclose(preprocess_eval(b), ref, atol=1e-5)


def test_cpu_sampler_equals_grid_sample_on_real_pictures(shared_voc):
    """The CPU path (OpenCV, uint8) and the GPU path (grid_sample, float) apply the same random maps."""
    import numpy as np
    import torch.nn.functional as F

    from vocfleet.model.augment import warp_cpu
    from vocfleet.model.data import load_rgb

    root = shared_voc / "JPEGImages"  # the fixture skips, with the reason, where the sample is not
    b = torch.from_numpy(np.stack([np.asarray(load_rgb(p, 48)) for p in sorted(root.glob("*.jpg"))[:12]]))
    aug = TrainAugment(scale=(0.6, 1.4), max_degrees=30)  # wider than the default: more border
    theta = aug.thetas(len(b), torch.Generator().manual_seed(3))
    x = preprocess_eval(b)
    expected = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode="bilinear", padding_mode="reflection", align_corners=False)
    got = warp_cpu(b, theta)
    assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last)
    grey_levels = (got - expected).abs() * 255 * 0.229  # normalised units back to 0-255 (the smallest std)
    assert grey_levels.max() < 1.0  # OpenCV rounds to whole levels: nothing more than that differs
    assert not torch.allclose(got, x, atol=0.1)  # and the pictures did move


def test_strong_policy_on_a_cpu_equals_the_float_path_on_real_pictures(shared_voc):
    """Shifts and the colour jitter: OpenCV's uint8 path with a lookup table per picture gives the
    batch the float path (the GPU's) gives, and the default policy is the origin's stream unchanged."""
    import numpy as np

    from vocfleet.model.augment import jitter_levels, warp_cpu
    from vocfleet.model.data import load_rgb

    b = torch.from_numpy(np.stack([np.asarray(load_rgb(p, 48)) for p in sorted((shared_voc / "JPEGImages").glob("*.jpg"))[:12]]))
    strong = TrainAugment.policy("strong")
    gen = torch.Generator().manual_seed(3)
    theta, factors = strong.thetas(len(b), gen), strong.jitters(len(b), gen)
    assert theta[:, :, 2].abs().max() > 0.1 and (factors[:, :2] - 1).abs().max() > 0.2  # it shifts, and changes levels
    expected, got = jitter_levels(b, factors, theta), warp_cpu(b, theta, None, factors)
    grey_levels = (got - expected).abs() * 255 * 0.229
    assert grey_levels.max() < 1.5 and grey_levels.mean() < 0.4  # a level's rounding, times the jitter's gain
    assert torch.equal(strong(b, torch.Generator().manual_seed(3)), got)  # what a batch gets on a CPU
    assert not torch.allclose(got, warp_cpu(b, theta), atol=0.1)  # the jitter did something
    from vocfleet.model.augment import POLICIES
    from vocfleet.model.config import AUGMENT_POLICIES

    assert tuple(POLICIES) == AUGMENT_POLICIES  # the names TrainConfig accepts (no torch there) are the policies that exist
    default = TrainAugment.policy("origin")
    assert torch.equal(default(b, torch.Generator().manual_seed(4)), TrainAugment()(b, torch.Generator().manual_seed(4)))


def test_shift_alone_moves_the_picture_by_its_share_of_the_side():
    b = _batch()
    aug = TrainAugment(scale=(1.0, 1.0), max_degrees=0.0, hflip=0.0, translate=0.25)
    theta = aug.thetas(len(b), torch.Generator().manual_seed(0))
    shift_px = theta[:, :, 2] * 32 / 2  # normalised [-1, 1] -> pixels of the 32-px side
    assert shift_px.abs().max() <= 8 and shift_px.abs().max() > 2
    pixels = torch.zeros(1, 32, 32, 3, dtype=torch.uint8)
    pixels[0, 10, 10] = 255
    one = torch.tensor([[[1.0, 0.0, 4 / 16], [0.0, 1.0, -2 / 16]]])  # input x = output x + 4 px, y = output y - 2 px
    from vocfleet.model.augment import warp_cpu

    moved = warp_cpu(pixels, one)[0, 0]
    assert moved.argmax() == 12 * 32 + 6  # the bright pixel at (x 10, y 10) now at (x 6, y 12)


def test_reused_output_buffer_gives_the_same_batches():
    b = _batch()
    fresh, reused = TrainAugment(), TrainAugment(reuse_output=True)
    first = reused(b, torch.Generator().manual_seed(5))
    assert torch.equal(first, fresh(b, torch.Generator().manual_seed(5)))
    second = reused(b, torch.Generator().manual_seed(6))
    assert second.data_ptr() == first.data_ptr()  # one buffer: the previous batch is overwritten
    assert torch.equal(second, fresh(b, torch.Generator().manual_seed(6)))


def test_erase_policy_is_strong_with_a_rectangle_of_half_the_pictures_at_the_mean_colour():
    """--augment-policy erase: the strong policy's batch, the same draws, then per picture one
    rectangle of 2-33% of it set to 0 (the normalised mean colour), about half the pictures."""
    g = torch.Generator().manual_seed(0)
    b = torch.randint(0, 256, (64, 48, 40, 3), dtype=torch.uint8, generator=g)
    strong, erasing = TrainAugment.policy("strong"), TrainAugment.policy("erase")
    plain, erased = strong(b, torch.Generator().manual_seed(7)), erasing(b, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    erasing.thetas(64, gen), erasing.jitters(64, gen)  # drawn first, as a call does
    boxes = erasing.erasures(64, 48, 40, gen)  # what the call above drew, after the strong policy's
    heights, widths = boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]
    whole = heights == 0
    assert 16 <= int(whole.sum()) <= 48  # about half the pictures are left whole
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] <= 48).all() and (boxes[:, 2] >= 0).all() and (boxes[:, 3] <= 40).all()
    share = (heights * widths)[~whole].double() / (48 * 40)
    assert share.min() > 0.005 and share.max() < 0.45  # 2-33% of the picture, less where a long side is clipped
    for i in range(64):
        t, bt, left, r = boxes[i].tolist()
        inside = torch.zeros(48, 40, dtype=torch.bool)
        inside[t:bt, left:r] = True
        assert (erased[i][:, inside] == 0).all()
        assert torch.equal(erased[i][:, ~inside], plain[i][:, ~inside])  # outside the rectangle: the strong policy's batch
    assert not torch.equal(erased, plain)
