#!/usr/bin/env python3
"""Writes tests/fixtures/mmdet_{resnet18,resnet50}_keys.json from mmdet's own ResNet.

{state_dict key: shape} of `mmdet.models.backbones.ResNet(depth=18 | 50)` with
its defaults (the backbone of mmdet's and mmseg's ResNet configs), which
tests/export_roundtrip.py compares `pixpro export --format mmdet` against
when mmdet itself cannot be imported, as in CI: mmdet needs mmcv, whose
compiled ops take long to build and which mmdet imports everywhere.

The ResNet is mmdet's code, run: mmdet 3.3.0, mmcv-lite 2.1.0 (mmcv without
the compiled ops) and mmengine 0.10.7, installed aside. Only the two files
the backbone is made of (models/backbones/resnet.py, models/layers/
res_layer.py) are loaded, with mmdet's package root and registry; the
packages around them (`mmdet.models`, `mmdet.utils`), which import the ops
and much else, are left out, standing in with the type aliases those files
take from `mmdet.utils`.

    .venv/bin/python -m pip install --no-deps --target /tmp/mm mmdet==3.3.0 \\
        mmcv-lite==2.1.0 mmengine==0.10.7 addict yapf termcolor rich pyyaml \\
        opencv-python-headless platformdirs tomli pygments markdown-it-py mdurl packaging
    PYTHONPATH=/tmp/mm .venv/bin/python scripts/make_mmdet_fixtures.py

With --check EXPORT (a `pixpro export --format mmdet` file of a ResNet-18 or
50) it also builds that ResNet with `init_cfg=dict(type="Pretrained",
checkpoint=EXPORT)`, runs mmengine's `init_weights()`, and checks that every
tensor of the backbone is the file's.
"""
import argparse
import importlib.util
import json
import sys
import types
import typing
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def mmdet_resnet():
    import mmdet

    root = Path(mmdet.__file__).parent

    def package(name, path=None):
        module = types.ModuleType(name)
        module.__path__ = [str(path)] if path else []
        sys.modules[name] = module
        return module

    def load(name, file):
        spec = importlib.util.spec_from_file_location(name, root / file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    package("mmdet.models", root / "models")
    package("mmdet.models.backbones", root / "models/backbones")
    utils = package("mmdet.utils")
    for alias in ["ConfigType", "OptConfigType", "OptMultiConfig", "MultiConfig"]:
        setattr(utils, alias, typing.Any)
    load("mmdet.registry", "registry.py")
    layers = package("mmdet.models.layers", root / "models/layers")
    layers.ResLayer = load("mmdet.models.layers.res_layer", "models/layers/res_layer.py").ResLayer
    return load("mmdet.models.backbones.resnet", "models/backbones/resnet.py").ResNet


def check(ResNet, export):
    import torch

    state = torch.load(export, weights_only=True)["state_dict"]
    depth = 50 if "layer1.0.conv3.weight" in state else 18
    model = ResNet(depth=depth, init_cfg=dict(type="Pretrained", checkpoint=export))
    model.init_weights()
    ours = model.state_dict()
    assert set(ours) == set(state), sorted(set(ours) ^ set(state))
    for name, tensor in ours.items():
        assert torch.equal(tensor, state[name]), name
    print(f"{export}: all {len(ours)} tensors of mmdet's ResNet-{depth} come from the file")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", metavar="EXPORT")
    args = ap.parse_args()
    import mmdet

    ResNet = mmdet_resnet()
    for depth in [18, 50]:
        sd = ResNet(depth=depth).state_dict()
        keys = {k: list(v.shape) for k, v in sd.items()}
        path = FIXTURES / f"mmdet_resnet{depth}_keys.json"
        path.write_text(json.dumps(keys, indent=1) + "\n")
        print(f"{path}: {len(keys)} keys (mmdet {mmdet.__version__})")
    if args.check:
        check(ResNet, args.check)


if __name__ == "__main__":
    main()
