"""Writes the weight files `tests/weights.rs` reads, as PyTorch users have them.

    python tests/weight_files.py OUT_DIR [--arch resnet18] [--seed 0]
    python tests/weight_files.py OUT_DIR --torchvision-init-only [--zero-init-residual]

Torchvision's ResNet without `fc`, every tensor set to seeded random values
so that a wrong key map or a transposed copy cannot pass, saved as:

- expected.safetensors: the state dict itself, the truth to compare with;
- zip.pth: `torch.save` (zip format) of `{"state_dict": {"module." + k: v}}`;
- legacy.pth: the legacy format (`_use_new_zipfile_serialization=False`) of
  the bare state dict, an OrderedDict with `_metadata` as state_dict() makes;
- reference.pth: a checkpoint shaped like the reference PixPro's
  `save_checkpoint`: `{"opt": argparse.Namespace, "model": {"module.encoder.",
  "module.encoder_k." (different values), "module.projector." ...},
  "optimizer": an optimiser state dict, "scheduler": {...}, "epoch": 3}`;
- d2.pkl: `pickle.dump` (protocol 4, as Python 3 writes by default) of
  `{"model": {Detectron2 name: numpy array}, "__author__": ..., 
  "matching_heuristics": True}`, the reference's conversion;
- missing.pth, shape.pth, vit.pth: a key left out, a wrong shape, a network
  that is no ResNet.

With --torchvision-init-only it writes just init.pth: the network with
torchvision's initialisation (kaiming-normal fan-out convolutions, BatchNorm
at 1 and 0), for comparing pixpro's random init with torchvision's; with
--zero-init-residual also the last BatchNorm of every residual branch at 0
(torchvision's `zero_init_residual=True`, which the spec's init follows).
"""

import argparse
import os
import pickle
import sys
from collections import OrderedDict

import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_roundtrip import detectron2_name, torchvision_model  # noqa: E402


def torchvision_init(model, zero_init_residual):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        for name, m in model.named_modules():
            last = "bn3" if hasattr(m, "bn3") else "bn2"
            if name.startswith("layer") and hasattr(m, last):
                nn.init.constant_(getattr(m, last).weight, 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torchvision-init-only", action="store_true")
    ap.add_argument("--zero-init-residual", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    model = torchvision_model(args.arch)
    if args.torchvision_init_only:
        torchvision_init(model, args.zero_init_residual)
        torch.save(model.state_dict(), os.path.join(args.out, "init.pth"))
        return
    state = model.state_dict()
    for k, v in state.items():
        if v.is_floating_point():
            v.copy_(torch.randn(v.shape))
            if "running_var" in k:
                v.abs_()
        else:
            v.fill_(7)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(args.out, "expected.safetensors"))

    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, os.path.join(args.out, "zip.pth"))
    torch.save(state, os.path.join(args.out, "legacy.pth"), _use_new_zipfile_serialization=False)

    encoder = {"module.encoder." + k: v for k, v in state.items()}
    target = {"module.encoder_k." + k: v + 1 for k, v in state.items()}
    heads = {
        "module.projector.linear1.weight": torch.randn(16, 512, 1, 1),
        "module.projector.bn1.running_mean": torch.randn(16),
        "module.projector_k.linear1.weight": torch.randn(16, 512, 1, 1),
    }
    params = [nn.Parameter(torch.randn(4, 3))]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    params[0].grad = torch.randn(4, 3)
    opt.step()
    namespace = argparse.Namespace(arch=args.arch, batch_size=32, pixpro_p=2.0, output_dir="./output")
    reference = {
        "opt": namespace,
        "model": OrderedDict({**encoder, **target, **heads}),
        "optimizer": opt.state_dict(),
        "scheduler": {"last_epoch": 3, "base_lrs": [1.0]},
        "epoch": 3,
    }
    torch.save(reference, os.path.join(args.out, "reference.pth"))

    d2 = {
        detectron2_name(k): v.numpy()
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    with open(os.path.join(args.out, "d2.pkl"), "wb") as f:
        pickle.dump({"model": d2, "__author__": "torchvision", "matching_heuristics": True}, f)

    missing = OrderedDict((k, v) for k, v in state.items() if k != "layer4.1.bn2.running_var")
    torch.save(missing, os.path.join(args.out, "missing.pth"))
    shape = OrderedDict(state)
    shape["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    torch.save(shape, os.path.join(args.out, "shape.pth"))
    vit = {"cls_token": torch.zeros(1, 1, 8), "patch_embed.proj.weight": torch.zeros(8, 3, 16, 16)}
    torch.save(vit, os.path.join(args.out, "vit.pth"))


if __name__ == "__main__":
    main()
