"""--init imagenet end to end without a network: torchvision-format weights placed in the torch hub cache by the test."""

import json

import torch
from torchvision.models import resnet50

from vocfleet.db.models import Detector
from vocfleet.db.session import session_scope
from vocfleet.model.checkpoint import load_checkpoint


def test_imagenet_init_loads_the_cached_weights_replaces_the_head_fine_tunes_and_scores(fake_voc, tmp_path, monkeypatch, invoke):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from vocfleet.model.net import imagenet_weights_path

    torch.manual_seed(123)
    imagenet = resnet50(num_classes=1000).state_dict()  # the shape and names of torchvision's ImageNet file
    path = imagenet_weights_path()
    assert str(path).startswith(str(tmp_path))
    path.parent.mkdir(parents=True)
    torch.save(imagenet, path)

    args = ["--epochs", 1, "--image-size", 32, "--batch-size", 8, "--max-batches", 2, "--lr", "1e-9"]  # a step too small to move the weights
    res = invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--init", "imagenet", *args)
    assert res.exit_code == 0, res.output
    assert invoke("run").exit_code == 0
    with session_scope() as s:
        det = s.query(Detector).one()
        checkpoint, threshold = det.checkpoint_path, det.threshold
    from vocfleet.db.settings import get_settings
    from vocfleet.model.artifacts import ArtifactStore

    state = load_checkpoint(ArtifactStore.from_settings(get_settings()).resolve(checkpoint))["model"]
    assert state["fc.weight"].shape == (1, 2048)  # the 1000-class head replaced by one logit
    assert torch.allclose(state["conv1.weight"], imagenet["conv1.weight"], atol=1e-5)  # the backbone is the cached file's
    assert torch.allclose(state["layer4.2.conv3.weight"], imagenet["layer4.2.conv3.weight"], atol=1e-5)

    res = invoke("score", fake_voc / "JPEGImages", "--format", "json")
    got = json.loads(res.stdout)
    assert res.exit_code == 0 and got["status"] == "succeeded" and got["scored"] == 47  # 48 listed, one missing on purpose
    rows = json.loads(invoke("results", got["run"], "--format", "json").output)
    bad = [(r["probability"], r["present"], threshold) for r in rows if r["present"] != (r["probability"] >= threshold)]
    assert not bad, bad[:5]


def test_the_v1_file_is_found_a_bad_file_is_one_line_and_a_start_takes_the_imagenet_init(fake_voc, tmp_path, monkeypatch, invoke):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from vocfleet.model.net import build_model, imagenet_weights_path

    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    v1 = folder / "resnet50-0676ba61.pth"  # torchvision's name for the V1 weights, where a user may have only those
    v1.write_bytes(b"not a state dict")
    assert imagenet_weights_path() == v1
    res = invoke("submit", "--classes", "car", "--voc-root", fake_voc, "--init", "imagenet", "--image-size", 32)
    assert res.exit_code == 2 and f"--init imagenet: {v1} is not a PyTorch state dict" in res.output and "Traceback" not in res.output
    torch.manual_seed(5)
    weights = resnet50(num_classes=1000).state_dict()
    torch.save(weights, v1)
    assert torch.equal(build_model("imagenet").state_dict()["layer1.0.conv1.weight"], weights["layer1.0.conv1.weight"])

    # With a shared start, --init is the start's: the start begins from ImageNet, the class jobs from the start.
    res = invoke("submit", "--classes", "car,dog", "--voc-root", fake_voc, "--init", "imagenet", "--start", "new", "--image-size", 32, "--format", "json")
    assert res.exit_code == 0, res.output
    with session_scope() as s:
        from vocfleet.db.models import TrainJob

        jobs = s.query(TrainJob).order_by(TrainJob.id).all()
        assert [(j.voc_class, j.config["init"], j.start_job_id) for j in jobs] == [("all", "imagenet", None), ("car", "scratch", 1), ("dog", "scratch", 1)]
        assert jobs[1].config["start"] == jobs[0].key
