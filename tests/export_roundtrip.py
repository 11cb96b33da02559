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
   `features`; with --image, its metadata `image` (when present) names it;
   with --rgb (a safetensors file holding the same image as uint8 [H, W, 3]
   `rgb`), the torchvision-named model loaded from the export, run in eval
   mode on that image normalised with ImageNet mean/std, gives the same
   features to 1e-4 (output stride 32 exports only: torchvision's ResNet-18/34
   have no dilation).

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
from torch.nn import functional as F


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


def block_c5(blk, x):
    out = F.relu(blk.bn1(blk.conv1(x)))
    if hasattr(blk, "conv3"):
        out = F.relu(blk.bn2(blk.conv2(out)))
        out = blk.bn3(blk.conv3(out))
    else:
        out = blk.bn2(blk.conv2(out))
    identity = blk.downsample(x) if blk.downsample is not None else x
    return F.relu(out + identity)


def c5(model, x):
    """torchvision's ResNet forward up to layer4 (no pooling, no fc)."""
    x = F.max_pool2d(F.relu(model.bn1(model.conv1(x))), 3, 2, 1)
    for i in range(1, 5):
        for blk in getattr(model, f"layer{i}"):
            x = block_c5(blk, x)
    return x


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
    return feats


def check_same_features(feats, rgb_path, tv_state, arch):
    rgb = load_file(rgb_path)["rgb"]
    x = rgb.permute(2, 0, 1).float().unsqueeze(0) / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    model = build_model(arch)
    model.load_state_dict(tv_state, strict=True)
    model.eval()
    with torch.no_grad():
        ours = c5(model, (x - mean) / std)[0]
    assert ours.shape == feats.shape, (ours.shape, feats.shape)
    err = (ours - feats).abs().max().item() / max(1.0, ours.abs().max().item())
    assert err <= 1e-4, f"features differ from the torchvision model's by {err:.3g} (relative)"
    print(f"features equal the torchvision model's on the image (max relative difference {err:.2g})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torchvision", required=True)
    ap.add_argument("--detectron2", required=True)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="resnet50")
    ap.add_argument("--features")
    ap.add_argument("--image")
    ap.add_argument("--rgb")
    args = ap.parse_args()
    tv_state = check_torchvision(args.torchvision, args.arch)
    check_detectron2(args.detectron2, tv_state)
    if args.features:
        feats = check_features(args.features, args.image)
        if args.rgb:
            check_same_features(feats, args.rgb, tv_state, args.arch)
    print("ok")


if __name__ == "__main__":
    sys.exit(main())
