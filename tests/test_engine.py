"""fit(): results, reproducibility, resume from checkpoint, bad splits."""

import numpy as np
import pytest
import torch

from vocfleet.model import ConfigError
from vocfleet.model.checkpoint import load_checkpoint
from vocfleet.model.config import TrainConfig
from vocfleet.model.engine import SoftTargets, Stopped, epoch_image_size, evaluate, fit
from vocfleet.model.events import BatchProgress, EpochFinished, FitResumed
from vocfleet.model.net import add_stochastic_depth, build_model, detector_model
from vocfleet.model.splits import prepare_splits


def _cfg(root, **kw):
    base = dict(voc_class="car", voc_root=str(root), arch="tiny", image_size=32, epochs=2, batch_size=8, max_batches=3, eval_fraction=0.3, val_fraction=0.3)
    base.update(kw)
    return TrainConfig(**base)


def test_splits_are_disjoint_and_skip_difficult_and_missing(fake_voc, tmp_path):
    train, val, ev, skipped = prepare_splits(_cfg(fake_voc), tmp_path / "cache")
    ids = lambda sp: {sp.decoded.ids[r] for r in sp.rows}
    assert not (ids(train) & ids(val)) and not (ids(train) & ids(ev)) and not (ids(val) & ids(ev))
    assert skipped == ["000007"]
    difficult = {f"{k + 1:06d}" for k in range(48) if k % 11 == 5}
    assert not (difficult & (ids(train) | ids(val) | ids(ev)))
    assert len(train) + len(val) + len(ev) == 48 - len(difficult) - 1


def test_difficult_can_count_as_positive(fake_voc, tmp_path):
    train, val, ev, _ = prepare_splits(_cfg(fake_voc, difficult="positive"), tmp_path / "cache")
    assert len(train) + len(val) + len(ev) == 47


def test_fit_writes_detector_and_reproduces_its_ap(fake_voc, tmp_path):
    cfg = _cfg(fake_voc)
    events = []
    result = fit(cfg, out_dir=tmp_path / "job", cache_dir=tmp_path / "cache", progress=events.append)
    assert [e.record.epoch for e in events if isinstance(e, EpochFinished)] == [1, 2]
    assert result.resumed_from == 0 and result.skipped_images == ["000007"]
    m = result.metrics
    assert {"ap", "ap11", "auc", "accuracy", "baseline_accuracy", "precision", "recall", "f1", "threshold"} <= set(m)
    ckpt = load_checkpoint(tmp_path / "job" / "detector.pt")
    assert ckpt["config"] == cfg.to_dict() and set(ckpt) >= {"model", "epoch", "config", "metrics", "threshold"}
    model = detector_model(ckpt)
    _, _, ev, _ = prepare_splits(cfg, tmp_path / "cache")
    again = evaluate(model, ev, torch.device("cpu"))
    assert again["ap"] == pytest.approx(m["ap"], abs=1e-6)


def test_seeded_runs_are_reproducible(fake_voc, tmp_path):
    a = fit(_cfg(fake_voc), out_dir=tmp_path / "a", cache_dir=tmp_path / "cache")
    b = fit(_cfg(fake_voc), out_dir=tmp_path / "b", cache_dir=tmp_path / "cache")
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]
    assert a.metrics == b.metrics


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_interrupted_fit_resumes_and_matches_uninterrupted(fake_voc, tmp_path, ema):
    cfg = _cfg(fake_voc, epochs=3, ema=ema)
    full = fit(cfg, out_dir=tmp_path / "full", cache_dir=tmp_path / "cache")

    seen = []

    def stop_in_epoch_2(event):
        if isinstance(event, BatchProgress) and event.epoch == 2:
            raise Stopped("simulated crash")
        seen.append(event)

    with pytest.raises(Stopped):
        fit(cfg, out_dir=tmp_path / "job", cache_dir=tmp_path / "cache", progress=stop_in_epoch_2)
    assert load_checkpoint(tmp_path / "job" / "last.pt")["epoch"] == 1
    events = []
    resumed = fit(cfg, out_dir=tmp_path / "job", cache_dir=tmp_path / "cache", progress=events.append)
    assert resumed.resumed_from == 1 and [e.record.epoch for e in events if isinstance(e, EpochFinished)] == [2, 3]
    [back] = [e for e in events if isinstance(e, FitResumed)]  # what last.pt holds, for the rows a killed worker left out
    assert [(h.epoch, h.train_loss) for h in back.history] == [(1, pytest.approx(full.history[0].train_loss, rel=1e-4))]
    assert [h.train_loss for h in resumed.history] == pytest.approx([h.train_loss for h in full.history], rel=1e-4)
    assert resumed.metrics["ap"] == pytest.approx(full.metrics["ap"], abs=1e-4)


def test_should_stop_raises_between_batches(fake_voc, tmp_path):
    with pytest.raises(Stopped):
        fit(_cfg(fake_voc), out_dir=tmp_path / "j", cache_dir=tmp_path / "cache", should_stop=lambda: True)


def test_overlapping_eval_split_is_refused(fake_voc, tmp_path):
    with pytest.raises(ConfigError, match="shares"):
        prepare_splits(_cfg(fake_voc, eval_split="train"), tmp_path / "cache")


def test_fit_learns_the_fake_signal(fake_voc, tmp_path):
    """Positives carry a bright square; a few epochs without caps must rank them above chance."""
    cfg = _cfg(fake_voc, max_batches=None, epochs=6, batch_size=8, lr=3e-3, eval_fraction=0.4)
    result = fit(cfg, out_dir=tmp_path / "j", cache_dir=tmp_path / "cache")
    pos_rate = result.metrics["positives"] / result.metrics["images"]
    assert result.metrics["ap"] > pos_rate


def test_aux_classes_saves_a_single_logit_detector(fake_voc, tmp_path):
    from vocfleet.model.net import AuxLoss

    cfg = _cfg(fake_voc, aux_classes=True)
    train, _, _, _ = prepare_splits(cfg, tmp_path / "cache")
    assert train.aux.shape == (len(train), 20) and set(np.unique(train.aux)) <= {-1.0, 0.0, 1.0}
    result = fit(cfg, out_dir=tmp_path / "job", cache_dir=tmp_path / "cache")
    ckpt = load_checkpoint(tmp_path / "job" / "detector.pt")
    assert ckpt["model"]["fc.weight"].shape == (1, 64)  # the tiny network's width
    model = detector_model(ckpt)
    _, _, ev, _ = prepare_splits(cfg, tmp_path / "cache")
    assert evaluate(model, ev, torch.device("cpu"))["ap"] == pytest.approx(result.metrics["ap"], abs=1e-6)
    # Unknown labels (-1) are masked out of the auxiliary part of the loss.
    loss = AuxLoss(0, None)
    t = torch.tensor([[1.0, -1.0, 0.0]])
    assert torch.isclose(loss(torch.tensor([[0.0, 100.0, 0.0]]), t), loss(torch.tensor([[0.0, -100.0, 0.0]]), t))


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8])
def test_one_cycle_schedule_works_for_any_number_of_steps(steps):
    from types import SimpleNamespace

    from vocfleet.model.engine import _make_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = _make_scheduler(SimpleNamespace(schedule="onecycle", lr=0.1, epochs=1), opt, steps)
    for _ in range(steps):
        opt.step()
        sched.step()


def test_ema_detector_holds_the_averaged_weights(fake_voc, tmp_path):
    """With --ema the saved detector is the moving average, not the last weights, and it reproduces its AP."""
    result = fit(_cfg(fake_voc, epochs=1, ema=0.9), out_dir=tmp_path / "job", cache_dir=tmp_path / "cache")  # one epoch: the best is the last
    detector = load_checkpoint(tmp_path / "job" / "detector.pt")["model"]
    last = load_checkpoint(tmp_path / "job" / "last.pt")
    assert set(detector) == set(last["model"]) and "n_averaged" in last["ema"]
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    assert torch.equal(detector["fc.weight"], averaged["fc.weight"]) and not torch.equal(detector["fc.weight"], last["model"]["fc.weight"])
    _, _, ev, _ = prepare_splits(_cfg(fake_voc, epochs=1, ema=0.9), tmp_path / "cache")
    model = build_model("scratch", arch="tiny")
    model.load_state_dict(detector)
    assert evaluate(model, ev, torch.device("cpu"))["ap"] == pytest.approx(result.metrics["ap"], abs=1e-6)


def test_a_config_stored_before_ema_keeps_running_without_it(fake_voc):
    stored = _cfg(fake_voc).to_dict()
    del stored["ema"]  # a job row written by 0.2
    assert TrainConfig.from_dict(stored).ema == 0.0 and TrainConfig(voc_class="car", voc_root=str(fake_voc)).ema == 0.95


def test_soft_targets_smooth_and_mix_within_the_batch():
    from vocfleet.model.engine import SoftTargets

    x = torch.arange(8 * 3 * 2 * 2, dtype=torch.float32).reshape(8, 3, 2, 2)
    labels = torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 1])
    _, smoothed = SoftTargets(0.0, 0.1)(x, labels, torch.Generator().manual_seed(0))
    assert smoothed.tolist() == pytest.approx([0.95 if v else 0.05 for v in labels.tolist()])
    mixed_x, mixed = SoftTargets(0.4, 0.0)(x, labels, torch.Generator().manual_seed(1))
    assert not torch.equal(mixed_x, x) and bool(((mixed >= 0) & (mixed <= 1)).all())
    # A convex blend of the batch with itself shuffled: pixel and label sums are kept.
    assert float(mixed.sum()) == pytest.approx(float(labels.sum())) and float(mixed_x.sum()) == pytest.approx(float(x.sum()), rel=1e-5)
    again_x, again = SoftTargets(0.4, 0.0)(x, labels, torch.Generator().manual_seed(1))
    assert torch.equal(again_x, mixed_x) and torch.equal(again, mixed)  # seeded: a resumed epoch draws the same


@pytest.mark.parametrize("arch", ["tiny", "resnet50"])
def test_stochastic_depth_drops_blocks_in_training_only(arch):
    torch.manual_seed(0)
    plain = build_model(arch=arch)
    deep = build_model(arch=arch)
    deep.load_state_dict(plain.state_dict())
    add_stochastic_depth(deep, 0.5)
    assert deep.state_dict().keys() == plain.state_dict().keys()  # saved and scored like any detector
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(deep.eval()(x), plain.eval()(x))  # evaluation: every block, nothing rescaled
        plain.train()
        deep.train()
        torch.manual_seed(1)
        dropped = deep(x)
        assert not torch.allclose(dropped, plain(x))
        torch.manual_seed(1)
        assert torch.equal(deep(x), dropped)  # drawn from torch's seeded generator


def test_progressive_resizing_grows_to_the_full_size_by_the_last_epoch(fake_voc):
    sizes = [epoch_image_size(_cfg(fake_voc, image_size=64, epochs=8, progressive_resize=0.5), e) for e in range(1, 9)]
    assert sizes == [32, 40, 40, 48, 48, 56, 56, None]  # None: the full 64 px, as evaluation
    assert epoch_image_size(_cfg(fake_voc, image_size=64, epochs=1, progressive_resize=0.5), 1) is None
    assert epoch_image_size(_cfg(fake_voc, image_size=64, epochs=8), 1) is None


@pytest.mark.parametrize(
    "kw",
    [
        {"mixup": 0.2},
        {"label_smoothing": 0.1},
        {"mixup": 0.2, "label_smoothing": 0.1},
        {"drop_path": 0.2},
        {"progressive_resize": 0.5, "image_size": 64},
        {"augment_policy": "strong"},
    ],
)
def test_fit_trains_with_each_new_idea(fake_voc, tmp_path, kw):
    plain = fit(_cfg(fake_voc, epochs=1), out_dir=tmp_path / "plain", cache_dir=tmp_path / "cache")
    soft = fit(_cfg(fake_voc, epochs=1, **kw), out_dir=tmp_path / "soft", cache_dir=tmp_path / "cache")
    assert soft.history[0].train_loss != plain.history[0].train_loss and np.isfinite(soft.metrics["ap"])


def test_mixup_and_smoothing_keep_a_starts_unknown_labels_unknown():
    labels = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    mixed_x, mixed = SoftTargets(mixup=1.0, smoothing=0.1)(x, labels, torch.Generator().manual_seed(3))
    assert not torch.equal(mixed_x, x)  # the pictures were blended
    unknown = mixed < 0
    assert torch.all(mixed[unknown] == -1.0) and unknown[0, 1] and unknown[1, 2]  # an unknown stays unknown in its own row
    assert unknown.sum() > 2  # and makes the row it was blended into unknown there too
    known = mixed[~unknown]
    assert known.min() >= 0.05 - 1e-6 and known.max() <= 0.95 + 1e-6  # smoothed known labels only
    _, smoothed = SoftTargets(mixup=0.0, smoothing=0.1)(x, labels, torch.Generator())
    assert torch.equal(smoothed[labels < 0], labels[labels < 0]) and torch.allclose(smoothed[labels == 1], torch.tensor(0.95))


@pytest.mark.parametrize(
    ("kw", "said"),
    [
        ({"label_smoothing": 0.5}, "--label-smoothing 0.5: must be at least 0 (off) and below 0.5"),
        ({"mixup": -1.0}, "--mixup -1.0: the Beta(a, a) parameter must be between 0 (off) and 10"),
        ({"mixup": 0.2, "aux_classes": True}, "--label-smoothing and --mixup do not combine with --aux-classes yet"),
        ({"progressive_resize": 0.5, "image_size": 48}, "--progressive-resize 0.5: the first epoch would train at 24 px, below 32; raise it"),
        ({"progressive_resize": 1.0}, "--progressive-resize 1.0: the first epoch's share of --image-size must be at least 0 (off) and below 1"),
        ({"drop_path": 1.0}, "--drop-path 1.0: the last block's drop probability must be at least 0 (off) and below 1"),
        ({"augment_policy": "heavy"}, "--augment-policy 'heavy': only origin, strong, erase are supported"),
    ],
)
def test_new_idea_settings_are_checked(fake_voc, kw, said):
    with pytest.raises(ConfigError, match=said.replace("(", r"\(").replace(")", r"\)")):
        _cfg(fake_voc, **kw)
