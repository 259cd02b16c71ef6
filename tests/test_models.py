import pytest
import torch
import torchvision

from models.resnet import ResNet


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_backbone_state_dict_loads_into_torchvision(arch):
    ours = ResNet(arch, width=64, cifar_stem=False)
    tv = getattr(torchvision.models, arch)()
    missing, unexpected = tv.load_state_dict(ours.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == ["fc.bias", "fc.weight"]
    tv.fc = torch.nn.Identity()
    ours.eval(), tv.eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(ours(x), tv(x), atol=1e-5)


def test_forward_stages_stops_early_and_width():
    net = ResNet("resnet18", width=8, cifar_stem=True)
    ran = []
    for i, name in enumerate(["layer1", "layer2", "layer3", "layer4"]):
        getattr(net, name).register_forward_hook(lambda *_, i=i: ran.append(i))
    feats = net.forward_stages(torch.randn(2, 3, 32, 32), upto=2)
    assert ran == [0, 1]                     # stages 3 and 4 were not computed
    assert [f.shape[1:] for f in feats] == [(8, 32, 32), (16, 16, 16)]
    assert net.stage_channels == [8, 16, 32, 64] and net(torch.randn(2, 3, 32, 32)).shape == (2, 64)
