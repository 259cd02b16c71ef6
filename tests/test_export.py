"""export.py: a run's backbone as model.safetensors + config.json that torchvision and timm load
strictly (timm through its Hub folder layout, read here from the local folder: no network) and
that give the project's features on the same input."""
import json
import os

import pytest
import torch

from common import checkpoint
from common.config import _to_config
from conftest import TINY, run
from selfsup.config import ssl_defaults

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
from safetensors.torch import load_file  # noqa: E402

import export  # noqa: E402
from models.resnet import ResNet  # noqa: E402
from models.vit import ViT  # noqa: E402


def _checkpoint(path, backbone, **model):
    cfg = _to_config(ssl_defaults()).to_dict()
    cfg["model"].update(model)
    cfg["data"]["crop_size"] = 48 if model["arch"].startswith("vit") else 32
    checkpoint.save_atomic({"backbone": backbone.state_dict(), "config": cfg, "step": 3}, str(path))
    return str(path)


def _trained_like(net, x):
    """Weights away from their init and BatchNorm statistics that are not 0 / 1."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        net.train()
        for _ in range(3):
            net(x)
    return net.eval()


def _torchvision(folder):
    cfg = json.load(open(os.path.join(folder, "config.json")))
    model = getattr(torchvision.models, cfg["pretraining"]["arch"])(weights=None)   # noqa: F841 (used by `then`)
    for line in cfg["then"]:
        exec(line)
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")), strict=True)
    return model.eval()


def test_a_vit_loads_into_timm_from_its_hub_folder_with_the_same_features(tmp_path):
    x = torch.randn(2, 3, 48, 48)
    vit = _trained_like(ViT("vit_t16", 8), x)
    out = export.export(_checkpoint(tmp_path / "v.pt", vit, arch="vit_t16", patch_size=8), "timm", str(tmp_path / "v"))
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()   # strict load of every weight
    assert type(model).__name__ == "VisionTransformer" and model.patch_embed.proj.kernel_size == (8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cifar_stem", [False, True])
def test_a_resnet_loads_into_torchvision_and_timm_with_the_same_features(tmp_path, cifar_stem):
    x = torch.randn(4, 3, 32, 32)
    net = _trained_like(ResNet("resnet18", 64, cifar_stem, False), x)
    ckpt = _checkpoint(tmp_path / "r.pt", net, arch="resnet18", width=64, cifar_stem=cifar_stem)
    with torch.no_grad():
        torch.testing.assert_close(_torchvision(export.export(ckpt, "torchvision", str(tmp_path / "tv")))(x), net(x),
                                   atol=1e-5, rtol=1e-5)
        if not cifar_stem:
            model = timm.create_model(f"local-dir:{export.export(ckpt, 'timm', str(tmp_path / 'tm'))}",
                                      pretrained=True).eval()
            torch.testing.assert_close(model(x), net(x), atol=1e-5, rtol=1e-5)


def test_a_trained_run_exports_through_the_command_line(tmp_path):
    out = str(tmp_path / "run")
    run(["train_ssl.py"] + TINY + ["model.width=64", "model.cifar_stem=false", "train.stop_at_step=2", f"output_dir={out}"])
    p = run(["export.py", out, "--format", "timm"])
    assert "export_timm" in p.stdout
    state = checkpoint.load(os.path.join(out, "checkpoint.pt"))
    net = ResNet("resnet18", 64, False, False)
    net.load_state_dict(state["backbone"])
    model = timm.create_model(f"local-dir:{os.path.join(out, 'export_timm')}", pretrained=True).eval()
    cfg = json.load(open(os.path.join(out, "export_timm", "config.json")))
    assert cfg["pretraining"]["method"] == "simsiam" and cfg["pretraining"]["step"] == 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net.eval()(x), atol=1e-5, rtol=1e-5)


def test_what_cannot_be_exported_is_one_line(tmp_path, capsys):
    cases = [
        (_checkpoint(tmp_path / "w.pt", ResNet("resnet18", 16, True, False), arch="resnet18", width=16), "torchvision",
         "model.width=16: torchvision's and timm's resnet18 have 64 base channels"),
        (_checkpoint(tmp_path / "c.pt", ResNet("resnet18", 64, True, False), arch="resnet18", width=64,
                     cifar_stem=True), "timm", "timm's ResNets have no 3x3 stride-1 stem"),
        (_checkpoint(tmp_path / "v.pt", ViT("vit_t16", 8), arch="vit_t16", patch_size=8), "torchvision",
         "use --format timm"),
        (str(tmp_path / "w.pt"), "onnx", "--format onnx: one of torchvision, timm"),
    ]
    torch.save({"model": {}}, tmp_path / "nobackbone.pt")
    cases.append((str(tmp_path / "nobackbone.pt"), "timm", "has no backbone to export"))
    for source, fmt, words in cases:
        with pytest.raises(SystemExit) as e:
            export.main([source, "--format", fmt])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and words in err[0], (words, err)


def test_exported_weights_come_back_through_linear_eval_and_model_pretrained(tmp_path):
    """The other direction: the torchvision / timm files (.safetensors, and a .pth state dict)
    are a starting backbone for linear_eval.py and train_supervised.py, and give the same backbone."""
    import linear_eval
    from models import build_backbone, interchange
    from models.classifier import build_classifier, load_pretrained_backbone
    x = torch.randn(2, 3, 48, 48)
    vit = _trained_like(ViT("vit_t16", 8), x)
    out = export.export(_checkpoint(tmp_path / "v.pt", vit, arch="vit_t16", patch_size=8), "timm", str(tmp_path / "v"))
    weights = os.path.join(out, "model.safetensors")
    _, state, cfg = linear_eval.parse(["--checkpoint", weights])   # model.* from export.py's config.json
    assert state is None and cfg.model.arch == "vit_t16" and cfg.model.patch_size == 8
    back = build_backbone(cfg.model)
    interchange.load_external(back, weights)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), vit(x), atol=1e-6, rtol=1e-6)
    # a ResNet's torchvision file saved as .pth, into train_supervised.py's classifier
    net = _trained_like(ResNet("resnet18", 64, False, False), torch.randn(4, 3, 32, 32))
    folder = export.export(_checkpoint(tmp_path / "r.pt", net, arch="resnet18", width=64, cifar_stem=False),
                           "torchvision", str(tmp_path / "tv"))
    full = torchvision.models.resnet18(weights=None)   # a torchvision model with its 1000-class fc
    full.load_state_dict(load_file(os.path.join(folder, "model.safetensors")), strict=False)
    torch.save(full.state_dict(), tmp_path / "resnet18.pth")   # the classifier is dropped on load
    mc = _to_config(ssl_defaults()).model
    mc.update(arch="resnet18", width=64, cifar_stem=False)
    clf = load_pretrained_backbone(build_classifier(mc, 10), str(tmp_path / "resnet18.pth"), mc)
    assert all(torch.equal(v, clf.backbone.state_dict()[k]) for k, v in net.state_dict().items())
    # a learned position embedding cannot become this ViT's sin-cos one
    bad = load_file(weights)
    bad["pos_embed"] = torch.randn_like(bad["pos_embed"])
    from safetensors.torch import save_file
    save_file(bad, str(tmp_path / "learned.safetensors"))
    with pytest.raises(Exception, match="learned position embeddings"):
        interchange.load_external(ViT("vit_t16", 8), str(tmp_path / "learned.safetensors"))
