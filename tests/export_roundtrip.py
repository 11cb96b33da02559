"""Checks pixpro's transfer files from the Python side (spec section 7).

    python tests/export_roundtrip.py --arch resnet50 \
        --torchvision r50.safetensors --detectron2 r50.pkl \
        [--features feats.safetensors [--image photo.jpg]]

1. The torchvision safetensors load with `load_state_dict(strict=True)` into
   a ResNet whose `fc` is removed (pixpro drops `fc.*`).
2. The Detectron2 pickle loads with plain `pickle.load` (+ numpy), carries
   `__author__` and `matching_heuristics=True`, and its "model" key set is
   exactly what Detectron2's ResNet expects: derived here from the torchvision
   key set by the reference's string rules (an implementation independent of
   the Rust one), every array float32 with the torchvision tensor's shape and
   values.
3. Optionally, a `pixpro embed` file holds one float32 [C, H, W] tensor
   `features`; with --image, its metadata `image` (when present) names it.

torchvision is not installed in our environment, so the ResNet below is our
own minimal torch.nn definition that uses torchvision's module names
(conv1, bn1, layerN.B.{convK,bnK,downsample.0/1}); strict loading into it
checks exactly the key set and shapes that torchvision's resnet18/34/50 have.
If torchvision is importable it is used instead.
"""

import argparse
import os
import pickle
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = downsample


class ResNetNoFc(nn.Module):
    """Parameters and buffers only, named as torchvision's ResNet minus fc."""

    def __init__(self, block, layers):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (width, n) in enumerate(zip([64, 128, 256, 512], layers)):
            stride = 1 if i == 0 else 2
            blocks = []
            for b in range(n):
                s = stride if b == 0 else 1
                down = None
                if b == 0 and (s != 1 or cin != width * block.expansion):
                    down = nn.Sequential(
                        nn.Conv2d(cin, width * block.expansion, 1, s, bias=False),
                        nn.BatchNorm2d(width * block.expansion),
                    )
                blocks.append(block(cin, width, s, down))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))


ARCHS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def build_model(arch):
    try:
        import torchvision

        model = getattr(torchvision.models, arch)()
        del model.fc
        return model
    except ImportError:
        return ResNetNoFc(*ARCHS[arch])


def detectron2_name(k):
    """The reference's conversion (string replaces), num_batches_tracked skipped."""
    if "layer" not in k:
        k = "stem." + k
    for t in [1, 2, 3, 4]:
        k = k.replace(f"layer{t}", f"res{t + 1}")
    for t in [1, 2, 3]:
        k = k.replace(f"bn{t}", f"conv{t}.norm")
    k = k.replace("downsample.0", "shortcut")
    k = k.replace("downsample.1", "shortcut.norm")
    return k


def check_torchvision(path, arch):
    state = load_file(path)
    model = build_model(arch)
    model.load_state_dict(state, strict=True)
    floats = [k for k, v in state.items() if v.is_floating_point()]
    assert all(state[k].dtype == torch.float32 for k in floats), "non-float32 tensor"
    print(f"torchvision: {len(state)} tensors load strictly into {arch} without fc")
    return state


def check_detectron2(path, tv_state):
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="latin1")
    assert set(obj) == {"model", "__author__", "matching_heuristics"}, set(obj)
    assert obj["matching_heuristics"] is True
    assert obj["__author__"] == "pixpro", obj["__author__"]
    model = obj["model"]
    expected = {
        detectron2_name(k): v for k, v in tv_state.items() if not k.endswith("num_batches_tracked")
    }
    missing, extra = set(expected) - set(model), set(model) - set(expected)
    assert not missing and not extra, f"missing {sorted(missing)}, extra {sorted(extra)}"
    for name, arr in model.items():
        assert type(arr) is np.ndarray and arr.dtype == np.float32, (name, type(arr), arr.dtype)
        want = expected[name].numpy()
        assert arr.shape == want.shape, (name, arr.shape, want.shape)
        assert np.array_equal(arr, want), name
    print(f"detectron2: {len(model)} float32 arrays, key set and values as expected")


def check_features(path, image):
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        assert list(f.keys()) == ["features"], list(f.keys())
        feats = f.get_tensor("features")
    assert feats.dim() == 3 and feats.dtype == torch.float32, (feats.shape, feats.dtype)
    assert torch.isfinite(feats).all(), "non-finite features"
    if image is not None:
        assert os.path.isfile(image), image
        named = meta.get("image")
        assert named is None or os.path.basename(named) == os.path.basename(image), (named, image)
    print(f"features: {tuple(feats.shape)}, metadata {meta}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torchvision", required=True)
    ap.add_argument("--detectron2", required=True)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="resnet50")
    ap.add_argument("--features")
    ap.add_argument("--image")
    args = ap.parse_args()
    tv_state = check_torchvision(args.torchvision, args.arch)
    check_detectron2(args.detectron2, tv_state)
    if args.features:
        check_features(args.features, args.image)
    print("ok")


if __name__ == "__main__":
    sys.exit(main())
