"""Checks pixpro's transfer files from the Python side (spec section 7).

    python tests/export_roundtrip.py --arch resnet50 \
        --torchvision r50.safetensors --pth r50.pth --mmdet r50-mmdet.pth \
        --detectron2 r50.pkl [--source CKPT] \
        [--features feats.safetensors [--image photo.jpg] [--rgb rgb.safetensors]]

1. The torchvision safetensors load with `load_state_dict(strict=True)` into
   torchvision's ResNet with its `fc` removed (pixpro drops `fc.*`).
2. The `.pth` file loads with `torch.load(weights_only=True)` as a plain dict
   of the same tensors, strictly into torchvision's ResNet without `fc` and
   into timm's with `num_classes=0` (timm's ResNet has torchvision's names,
   so `--format timm` is the same file).
3. The mmdet file loads with `torch.load(weights_only=True)` as `{"state_dict",
   "meta"}`; its state dict's names and shapes are those of mmdet's ResNet of
   that depth (mmdet itself when importable, else the key list that
   scripts/make_mmdet_fixtures.py took from it), its tensors the `.pth`'s.
4. The Detectron2 pickle loads with plain `pickle.load` (+ numpy), carries
   `__author__` and `matching_heuristics=True`, and its "model" key set is
   exactly what Detectron2's ResNet expects: derived here from the torchvision
   key set by the reference's string rules (an implementation independent of
   the Rust one), every array float32 with the torchvision tensor's shape and
   values.
5. Every export says the architecture, output stride, input normalisation,
   pixpro version and source (safetensors in its metadata, mmdet in `meta`,
   the others in FILE.json), the same in each; Detectron2's `PIXEL_MEAN` and
   `PIXEL_STD` and mmdet's `data_preprocessor` are that normalisation for
   pixels in [0, 255].
6. Optionally, a `pixpro embed` file holds one float32 [C, H, W] tensor
   `features`; with --image, its metadata `image` (when present) names it;
   with --rgb (a safetensors file holding the same image as uint8 [H, W, 3]
   `rgb`), torchvision's and timm's ResNets loaded from the `.pth`, run in
   eval mode on that image normalised as the export's metadata says, give
   the same features to 1e-4 (output stride 32 exports only: torchvision's
   ResNet-18/34 have no dilation).
"""

import argparse
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import timm
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ARCHS = ["resnet18", "resnet34", "resnet50"]


def torchvision_model(arch):
    model = getattr(torchvision.models, arch)()
    del model.fc
    return model


def timm_model(arch):
    return timm.create_model(arch, pretrained=False, num_classes=0)


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


def sidecar(path):
    with open(path + ".json") as f:
        return json.load(f)


def from_strings(meta):
    """String metadata with its JSON-text values parsed."""

    def value(v):
        try:
            return json.loads(v)
        except ValueError:
            return v

    return {k: value(v) for k, v in meta.items()}


INFO_KEYS = [
    "arch",
    "output_stride",
    "input_order",
    "input_range",
    "input_mean",
    "input_std",
    "pixpro_version",
    "source",
]


def check_info(info, arch, what):
    """The fields every export records, `arch` the one expected."""
    assert info["arch"] == arch, (what, info["arch"])
    assert info["output_stride"] in (8, 16, 32), (what, info["output_stride"])
    assert info["input_order"] == "RGB" and info["input_range"] == [0, 1], (what, info)
    assert len(info["input_mean"]) == 3 and len(info["input_std"]) == 3, (what, info)
    assert info["pixpro_version"], what
    assert info["source"], what
    return {k: info[k] for k in INFO_KEYS}


def check_255(info, mean, std, what):
    """`mean`/`std` are the export's normalisation for pixels in [0, 255]."""
    for got, want in [(mean, info["input_mean"]), (std, info["input_std"])]:
        assert np.allclose(got, [255 * v for v in want], rtol=0, atol=1e-3), (what, got, want)


def check_torchvision(path, arch, source):
    state = load_file(path)
    torchvision_model(arch).load_state_dict(state, strict=True)
    floats = [k for k, v in state.items() if v.is_floating_point()]
    assert all(state[k].dtype == torch.float32 for k in floats), "non-float32 tensor"
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    info = check_info(from_strings(meta), arch, "safetensors metadata")
    assert source is None or info["source"] == source, (info["source"], source)
    print(f"torchvision: {len(state)} tensors load strictly into {arch} without fc")
    return state, info


def check_pth(path, arch, tv_state, info):
    state = torch.load(path, weights_only=True)
    assert type(state) is dict, type(state)
    assert state.keys() == tv_state.keys(), sorted(state.keys() ^ tv_state.keys())
    for name, t in state.items():
        assert t.dtype == tv_state[name].dtype and torch.equal(t, tv_state[name]), name
    torchvision_model(arch).load_state_dict(state, strict=True)
    timm_model(arch).load_state_dict(state, strict=True)
    assert check_info(sidecar(path), arch, "pth sidecar") == info, "pth sidecar"
    print(
        f"pth: torch.load(weights_only=True) gives {len(state)} tensors that load strictly "
        f"into torchvision's and timm's {arch} (fc dropped)"
    )
    return state


def mmdet_keys(depth):
    try:
        from mmdet.models.backbones import ResNet

        sd = ResNet(depth=depth).state_dict()
        return {k: list(v.shape) for k, v in sd.items()}, "mmdet's ResNet"
    except ImportError:
        path = FIXTURES / f"mmdet_resnet{depth}_keys.json"
        return json.loads(path.read_text()), f"mmdet's ResNet as listed in {path.name}"


def check_mmdet(path, arch, pth_state, info):
    obj = torch.load(path, weights_only=True)
    assert set(obj) == {"state_dict", "meta"}, set(obj)
    state = obj["state_dict"]
    ours = {k: list(v.shape) for k, v in state.items()}
    depth = int(arch.removeprefix("resnet"))
    if depth in (18, 50):
        theirs, what = mmdet_keys(depth)
        missing, extra = theirs.keys() - ours.keys(), ours.keys() - theirs.keys()
        assert not missing and not extra, f"missing {sorted(missing)}, extra {sorted(extra)}"
        for name, shape in theirs.items():
            assert ours[name] == shape, (name, ours[name], shape)
    else:
        what = "(no mmdet key list for this depth)"
    assert state.keys() == pth_state.keys(), "mmdet and pth hold different tensors"
    for name, t in state.items():
        assert torch.equal(t, pth_state[name]), name
    meta = from_strings(obj["meta"])
    assert check_info(meta, arch, "mmdet meta") == info, "mmdet meta"
    pre = meta["mmdet_data_preprocessor"]
    assert pre["bgr_to_rgb"] is True, pre
    check_255(info, pre["mean"], pre["std"], "mmdet data_preprocessor")
    print(f"mmdet: {len(state)} tensors, names and shapes those of {what}")


def check_detectron2(path, tv_state, arch, info):
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
    side = sidecar(path)
    assert check_info(side, arch, "detectron2 sidecar") == info, "detectron2 sidecar"
    d2 = side["detectron2"]
    assert d2["INPUT.FORMAT"] == info["input_order"], d2
    check_255(info, d2["MODEL.PIXEL_MEAN"], d2["MODEL.PIXEL_STD"], "Detectron2 PIXEL_MEAN/STD")
    print(
        f"detectron2: {len(model)} float32 arrays, key set and values as expected; "
        f"PIXEL_MEAN {d2['MODEL.PIXEL_MEAN']}, PIXEL_STD {d2['MODEL.PIXEL_STD']}"
    )


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


def c5_torchvision(m, x):
    """torchvision's ResNet forward up to layer4 (no pooling, no fc), its own modules."""
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def check_same_features(feats, rgb_path, state, arch, info):
    assert info["output_stride"] == 32, "torchvision's ResNets run at output stride 32 only"
    rgb = load_file(rgb_path)["rgb"]
    x = rgb.permute(2, 0, 1).float().unsqueeze(0) / 255.0
    mean = torch.tensor(info["input_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["input_std"]).view(1, 3, 1, 1)
    x = (x - mean) / std
    tv, tm = torchvision_model(arch), timm_model(arch)
    for name, model, c5 in [
        ("torchvision", tv, c5_torchvision),
        ("timm", tm, lambda m, x: m.forward_features(x)),
    ]:
        model.load_state_dict(state, strict=True)
        model.eval()
        with torch.no_grad():
            theirs = c5(model, x)[0]
        assert theirs.shape == feats.shape, (name, theirs.shape, feats.shape)
        err = (theirs - feats).abs().max().item() / max(1.0, theirs.abs().max().item())
        assert err <= 1e-4, f"features differ from the {name} model's by {err:.3g} (relative)"
        print(
            f"features equal the {name} model's on the image "
            f"(max relative difference {err:.2g})"
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torchvision", required=True)
    ap.add_argument("--pth", required=True)
    ap.add_argument("--mmdet", required=True)
    ap.add_argument("--detectron2", required=True)
    ap.add_argument("--arch", choices=ARCHS, default="resnet50")
    ap.add_argument("--source", help="the weights the files were exported from")
    ap.add_argument("--features")
    ap.add_argument("--image")
    ap.add_argument("--rgb")
    args = ap.parse_args()
    tv_state, info = check_torchvision(args.torchvision, args.arch, args.source)
    pth_state = check_pth(args.pth, args.arch, tv_state, info)
    check_mmdet(args.mmdet, args.arch, pth_state, info)
    check_detectron2(args.detectron2, tv_state, args.arch, info)
    print(f"every export records {json.dumps(info)}")
    if args.features:
        feats = check_features(args.features, args.image)
        if args.rgb:
            check_same_features(feats, args.rgb, pth_state, args.arch, info)
    print("ok")


if __name__ == "__main__":
    sys.exit(main())
