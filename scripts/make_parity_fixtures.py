#!/usr/bin/env python3
"""Writes the golden fixtures that tests/parity.rs and src/model/resnet.rs compare against.

The positive mask, the per-pixel projector, the PPM and the consistency loss
in PyTorch float64, for a tiny fixed setup: B=2 images, two views each given
directly as 8-channel 4x4 feature maps (the encoder is left out), projector
8 -> 16 -> 8, PPM with gamma 2 and one transform layer, T = 0.7, view 2 of
image 1 flipped. It stores inputs, weights, mask, total loss and the gradients
of the loss w.r.t. every online projector and PPM parameter in
tests/fixtures/parity.safetensors (float64; the coordinates float32).

The loss and the gradients are the reference's own: with `--ref DIR` (a
checkout of zdaxie/PixPro at e390d6b) they are computed by its modules,
imported from the checkout: `MLP2d` as the projectors, its `conv1x1` as the
PPM's transform, `PixPro.featprop` and `regression_loss` (which applies its
own positive mask), so that the fixture and pixpro cannot share one
misreading of the paper. The same quantities written from
docs/pixpro-spec.md sections 2-4 in plain PyTorch are computed beside them
and the largest difference printed; without `--ref` the spec's are written.
The mask is the spec's either way (the reference's loss keeps its own
inside): a mask that differed from the reference's would move the loss.

With torchvision importable it also writes tests/fixtures/torchvision_{resnet18,
resnet50}_keys.json: {state_dict key: shape} of torchvision's models, fc.* left
out.

Regenerate (from the repository root; scripts/setup puts torchvision in .venv):

    .venv/bin/python scripts/make_parity_fixtures.py --ref ~/src/PixPro

The output is deterministic (fixed seed); then run `cargo test --test parity`.
"""
import argparse
import importlib
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
B, C, H, W, HIDDEN, DIM = 2, 8, 4, 4, 16, 8
GAMMA, T = 2.0, 0.7


def centres(coords, h, w):
    """Spec section 2: cell centres (row-major, index y*w + x) and bin diagonals."""
    x0, y0, x1, y1 = coords.double().unbind(1)  # [B] each
    bw, bh = (x1 - x0) / w, (y1 - y0) / h  # [B]
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    cx = (xs[None, None, :] * bw[:, None, None] + x0[:, None, None]).expand(-1, h, w)
    cy = (ys[None, :, None] * bh[:, None, None] + y0[:, None, None]).expand(-1, h, w)
    return cx.reshape(len(coords), -1), cy.reshape(len(coords), -1), torch.sqrt(bw**2 + bh**2)


def positive_mask(ca, cb, h, w, t):
    ax, ay, ad = centres(ca, h, w)
    bx, by, bd = centres(cb, h, w)
    dist = torch.sqrt((ax[:, :, None] - bx[:, None, :]) ** 2 + (ay[:, :, None] - by[:, None, :]) ** 2)
    return (dist / torch.maximum(ad, bd)[:, None, None] < t).double()  # [B, HW, HW]


def normalize(x):
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def projector(x, p):
    """conv1x1 (bias) -> BatchNorm2d with batch statistics -> ReLU -> conv1x1 (bias)."""
    y = F.conv2d(x, p["linear1.weight"], p["linear1.bias"])
    y = F.batch_norm(y, None, None, p["bn1.weight"], p["bn1.bias"], training=True, eps=1e-5)
    return F.conv2d(y.relu(), p["linear2.weight"], p["linear2.bias"])


def ppm(x, p):
    """y_i = sum_j max(cos(x_i, x_j), 0)^gamma * normalize(g(x))_j."""
    b, c, h, w = x.shape
    xn = normalize(x).reshape(b, c, h * w)  # [B, C, HW]
    a = torch.bmm(xn.transpose(1, 2), xn).clamp_min(0) ** GAMMA  # [B, HW, HW]
    v = normalize(F.conv2d(x, p["transform.weight"], p["transform.bias"])).reshape(b, c, h * w)
    return torch.bmm(v, a.transpose(1, 2)).reshape(b, c, h, w)


def consistency(p_a, z_b, mask):
    """Spec section 4: L(a->b)."""
    b, c = p_a.shape[:2]
    p = normalize(p_a).reshape(b, c, -1)
    z = normalize(z_b).reshape(b, c, -1)
    sim = torch.bmm(p.transpose(1, 2), z)  # [B, HW, H'W']
    per_image = (sim * mask).sum((1, 2)) / (mask.sum((1, 2)) + 1e-6)
    return -2 * per_image.mean()


def projector_params(g):
    return {
        "linear1.weight": torch.randn(HIDDEN, C, 1, 1, generator=g, dtype=torch.float64) / math.sqrt(C),
        "linear1.bias": 0.1 * torch.randn(HIDDEN, generator=g, dtype=torch.float64),
        "bn1.weight": 1 + 0.2 * torch.randn(HIDDEN, generator=g, dtype=torch.float64),
        "bn1.bias": 0.1 * torch.randn(HIDDEN, generator=g, dtype=torch.float64),
        "linear2.weight": torch.randn(DIM, HIDDEN, 1, 1, generator=g, dtype=torch.float64) / 4,
        "linear2.bias": 0.1 * torch.randn(DIM, generator=g, dtype=torch.float64),
    }


def reference_loss(ref, feat1, feat2, coords1, coords2, online, target):
    """The loss of the reference's PixPro.forward after its encoders, with
    the reference's modules holding `online` and `target`'s values; the
    loss and {online name: its module parameter}."""
    sys.path.insert(0, str(Path(ref).resolve()))
    pixpro = importlib.import_module("contrast.models.PixPro")

    def mlp(params, prefix):
        m = pixpro.MLP2d(C, HIDDEN, DIM).double()
        with torch.no_grad():
            for name, t in m.named_parameters():
                t.copy_(params[prefix + name])
        return m

    projector_q, projector_k = mlp(online, "projector."), mlp(target, "projector.")
    transform = pixpro.conv1x1(DIM, DIM).double()
    with torch.no_grad():
        transform.weight.copy_(online["ppm.transform.weight"])
        transform.bias.copy_(online["ppm.transform.bias"])
    # featprop reads these three attributes of the model and nothing else.
    model = SimpleNamespace(value_transform=transform, pixpro_clamp_value=0.0, pixpro_p=GAMMA)
    pred_1 = F.normalize(pixpro.PixPro.featprop(model, projector_q(feat1)), dim=1)
    pred_2 = F.normalize(pixpro.PixPro.featprop(model, projector_q(feat2)), dim=1)
    with torch.no_grad():
        proj_1_ng = F.normalize(projector_k(feat1), dim=1)
        proj_2_ng = F.normalize(projector_k(feat2), dim=1)
    loss = pixpro.regression_loss(pred_1, proj_2_ng, coords1, coords2, T) + pixpro.regression_loss(
        pred_2, proj_1_ng, coords2, coords1, T
    )
    params = {f"projector.{k}": v for k, v in projector_q.named_parameters()}
    params.update({f"ppm.transform.{k}": v for k, v in transform.named_parameters()})
    return loss, params


def parity(ref):
    g = torch.Generator().manual_seed(20210)
    feat1 = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    feat2 = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    # Image 1: overlapping crops; image 2: view 2 flipped (x0 > x1).
    coords1 = torch.tensor([[0.0, 0.1, 0.6, 0.7], [0.2, 0.0, 0.9, 0.8]], dtype=torch.float32)
    coords2 = torch.tensor([[0.3, 0.2, 0.9, 0.9], [0.95, 0.1, 0.25, 0.75]], dtype=torch.float32)
    online = {f"projector.{k}": v for k, v in projector_params(g).items()}
    online["ppm.transform.weight"] = torch.randn(DIM, DIM, 1, 1, generator=g, dtype=torch.float64) / math.sqrt(DIM)
    online["ppm.transform.bias"] = 0.1 * torch.randn(DIM, generator=g, dtype=torch.float64)
    target = {f"projector.{k}": v for k, v in projector_params(g).items()}
    for v in online.values():
        v.requires_grad_(True)

    def sub(params, prefix):
        return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}

    mask12 = positive_mask(coords1, coords2, H, W, T)  # [B, HW, HW]
    assert (mask12.sum((1, 2)) > 0).all(), "both images should have positives"
    p1 = ppm(projector(feat1, sub(online, "projector.")), sub(online, "ppm."))
    p2 = ppm(projector(feat2, sub(online, "projector.")), sub(online, "ppm."))
    with torch.no_grad():
        z1 = projector(feat1, sub(target, "projector."))
        z2 = projector(feat2, sub(target, "projector."))
    loss = consistency(p1, z2, mask12) + consistency(p2, z1, mask12.transpose(1, 2))
    loss.backward()
    grads = {k: v.grad for k, v in online.items()}
    source = "docs/pixpro-spec.md"
    if ref is not None:
        spec_loss, spec_grads = loss, grads
        loss, params = reference_loss(ref, feat1, feat2, coords1.double(), coords2.double(),
                                      {k: v.detach() for k, v in online.items()}, target)
        loss.backward()
        grads = {k: params[k].grad for k in online}
        print(f"reference against spec: loss {abs(loss - spec_loss).item():.2e}")
        for k in online:
            print(f"  grad.{k}: largest difference {(grads[k] - spec_grads[k]).abs().max().item():.2e}"
                  f" (largest value {grads[k].abs().max().item():.2e})")
        source = "the reference's modules (contrast/models/PixPro.py of a zdaxie/PixPro checkout)"

    out = {
        "input.feat1": feat1,
        "input.feat2": feat2,
        "input.coords1": coords1,
        "input.coords2": coords2,
        "mask12": mask12.float(),
        "loss": loss.detach().reshape([]),
    }
    out.update({f"online.{k}": v.detach() for k, v in online.items()})
    out.update({f"target.{k}": v for k, v in target.items()})
    out.update({f"grad.{k}": v for k, v in grads.items()})
    path = FIXTURES / "parity.safetensors"
    save_file({k: v.contiguous() for k, v in out.items()}, str(path), metadata={"loss_and_gradients": source})
    print(f"{path}: loss {loss.item():.6f} from {source}, positives per image {mask12.sum((1, 2)).tolist()}")


def torchvision_keys():
    try:
        import torchvision
    except ImportError:
        print("torchvision not importable: key lists left as they are")
        return
    for name in ["resnet18", "resnet50"]:
        sd = getattr(torchvision.models, name)().state_dict()
        keys = {k: list(v.shape) for k, v in sd.items() if not k.startswith("fc.")}
        path = FIXTURES / f"torchvision_{name}_keys.json"
        path.write_text(json.dumps(keys, indent=1) + "\n")
        print(f"{path}: {len(keys)} keys (torchvision {torchvision.__version__})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", help="checkout of zdaxie/PixPro: loss and gradients from its modules")
    a = ap.parse_args()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    parity(a.ref)
    torchvision_keys()
