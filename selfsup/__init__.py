"""Self-supervised methods, one file each. (The package is selfsup/, not ssl/: a top-level
package named ssl would shadow Python's standard ssl module and break HTTPS downloads and
`import torchvision.datasets`.)"""
import copy

from common.config import ConfigError

from selfsup import byol, dino, moco, mocov3, simclr, simsiam, swav  # noqa: F401  (they register themselves)
from selfsup.registry import METHODS


def method_defaults():
    """The config section `method`: the chosen name plus every method's own defaults."""
    out = {"name": "simsiam"}
    for name, (_, defaults) in METHODS.items():
        out[name] = copy.deepcopy(defaults)
    return out


def build_method(method_cfg, backbone):
    if method_cfg.name not in METHODS:
        raise ConfigError(f"method.name '{method_cfg.name}' is not one of {sorted(METHODS)}")
    cls, _ = METHODS[method_cfg.name]
    return cls(backbone, method_cfg[method_cfg.name])
