#!/usr/bin/env python3
"""Times the reference PyTorch PixPro (zdaxie/PixPro) on the CPU or one GPU,
in one process: its training step, its networks alone, or its data pipeline
alone.

Run by scripts/compare-reference with a Python that has torch, torchvision
and Pillow; standalone use:

    python scripts/reference_bench.py --ref ~/src/PixPro --data ~/photos \
        --mode train --arch resnet50 --image-size 224 --batch-size 16

The reference is imported from the user's checkout (--ref) and used as it is,
except for what one CPU process needs, all done here at run time and nothing
written to the checkout:

- torch.distributed is initialised with Gloo and one rank (the reference
  calls get_world_size() and wraps the model in DistributedDataParallel);
- its BatchNorm layers stay BatchNorm instead of becoming SyncBatchNorm:
  torch refuses SyncBatchNorm on CPU tensors, and with one rank it computes
  plain BatchNorm anyway;
- no apex: fp32 (`--amp-opt-level O0`), or with --precision bf16 the
  forward pass under torch.autocast(bfloat16), today's form of the apex O1
  mixed precision the paper's runs used; with --device cuda the model is
  moved as main_pretrain.py moves it, without --device cuda it stays on the
  CPU;
- pycocotools is replaced by an empty module when it is not installed: the
  reference imports it for COCO annotation files, which a folder of images
  does not use;
- its folder-mode image loader converts to RGB after closing the file, which
  current Pillow refuses ("seek of closed file"; the paper's runs used its
  zip mode, which reads bytes); torchvision's pil_loader, the same open,
  decode and convert with the file still open, replaces it;
- the image folder is given to the reference's own ImageFolder through a
  temporary `train/images` symlink, as its non-zip mode expects
  `DATA/train/CLASS/*.jpg`;
- for ResNet-18 (the `cpu` preset's recipe): the projector's input width is
  512 instead of the hard-coded 2048 and its hidden width is --proj-hidden;
  output stride 16 uses the reference's `layer4_dilation=2`, and since its
  BasicBlock ignores dilation, layer4's later blocks get dilation 2 as in
  pixpro (torchvision's rule: the first block of a dilated stage keeps the
  previous dilation).

The last line printed is one JSON object.
"""
import argparse
import contextlib
import functools
import importlib
import json
import os
import random
import resource
import socket
import statistics
import sys
import tempfile
import time
import types


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", required=True, help="checkout of zdaxie/PixPro")
    p.add_argument("--data", required=True, help="folder of images, searched recursively")
    p.add_argument("--mode", choices=["train", "networks", "data"], default="train")
    p.add_argument("--arch", choices=["resnet50", "resnet18"], default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--output-stride", type=int, choices=[32, 16], default=32)
    p.add_argument("--proj-hidden", type=int, default=4096)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 keeps torch's")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes (train mode)")
    p.add_argument("--steps", type=int, default=5, help="timed steps, or timed batches in data mode")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: the reference's own GPU set-up (model.cuda(), NCCL, cudnn.benchmark, "
                        "non-blocking copies from its pinned-memory loader)")
    p.add_argument("--pixpro-malloc", action="store_true",
                   help="glibc malloc set as pixpro's src/train/malloc.rs sets it (for networks mode's floor)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: the forward pass under torch.autocast with bfloat16 (train mode)")
    return p.parse_args()


def pixpro_malloc():
    """pixpro's allocator settings (src/malloc.rs): no mmap below 32 MiB,
    freed memory kept, the heap grown 512 MiB at a time."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    for param, value in ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 2**31 - 1), (m_top_pad, 512 << 20)):
        if libc.mallopt(param, value) != 1:
            sys.exit(f"mallopt({param}, {value}) failed")


def peak_rss_mb():
    """Peak resident memory of this process (Linux VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def free_port():
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stub_pycocotools():
    try:
        import pycocotools.coco  # noqa: F401
    except ImportError:
        pkg = types.ModuleType("pycocotools")
        coco = types.ModuleType("pycocotools.coco")
        coco.COCO = None
        pkg.coco = coco
        sys.modules["pycocotools"] = pkg
        sys.modules["pycocotools.coco"] = coco


def fix_pil_loader():
    import torchvision.datasets.folder

    import contrast.data.dataset

    contrast.data.dataset.pil_loader = torchvision.datasets.folder.pil_loader


# pixpro's checkpoint prefixes and the reference's PixPro module names
# (inside its DistributedDataParallel wrapper), for moving trained or
# initial tensors between the two.
PIXPRO_TO_REFERENCE = {
    "online/encoder.": "module.encoder.",
    "online/projector.": "module.projector.",
    "online/ppm.transform.": "module.value_transform.",
    "target/encoder.": "module.encoder_k.",
    "target/projector.": "module.projector_k.",
}


def renamed(state, names):
    """The tensors of `state` whose names start with a prefix in `names`,
    that prefix replaced by its value; the others left out."""
    out = {}
    for name, tensor in state.items():
        prefix = next((p for p in names if name.startswith(p)), None)
        if prefix is not None:
            out[names[prefix] + name[len(prefix):]] = tensor
    return out


def reference_trainer():
    """scripts/reference-train as a module (its file name has no .py): its
    recipe() turns a pixpro config into the reference's flags."""
    import importlib.machinery
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference-train")
    loader = importlib.machinery.SourceFileLoader("reference_train", path)
    spec = importlib.util.spec_from_loader("reference_train", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def reference_options(a, data_dir, flags=()):
    """The reference's own option parser, with the flags of its
    tools/pixpro_base_r50_100ep.sh minus zip, amp and the 8-GPU batch, then
    `flags` (a later flag wins in argparse)."""
    from contrast.option import parse_option

    argv = [
        "main_pretrain.py",
        "--data-dir", data_dir,
        "--crop", "0.08",
        "--aug", "BYOL",
        "--dataset", "ImageNet",
        "--batch-size", str(a.batch_size),
        "--image-size", str(a.image_size),
        "--num-workers", str(a.workers),
        "--model", "PixPro",
        "--arch", a.arch,
        "--head-type", "early_return",
        "--optimizer", "lars",
        "--base-lr", "1.0",
        "--weight-decay", "1e-5",
        "--warmup-epoch", "5",
        "--epochs", "100",
        "--amp-opt-level", "O0",
        "--pixpro-p", "2",
        "--pixpro-momentum", "0.99",
        "--pixpro-pos-ratio", "0.7",
        "--pixpro-transform-layer", "1",
        "--pixpro-ins-loss-weight", "0.",
        "--local_rank", "0",
        *flags,
    ]
    saved, sys.argv = sys.argv, argv
    try:
        return parse_option(stage="pre-train")
    finally:
        sys.argv = saved


def encoder_factory(a):
    """The reference's encoder constructor for --arch and --output-stride."""
    from contrast import resnet

    if a.output_stride == 32:
        return resnet.__dict__[a.arch]
    layers = {"resnet18": (resnet.BasicBlock, [2, 2, 2, 2]), "resnet50": (resnet.Bottleneck, [3, 4, 6, 3])}
    block, counts = layers[a.arch]

    def build(**kwargs):
        net = resnet.ResNet(block, counts, layer4_dilation=2, **kwargs)
        if block is resnet.BasicBlock:
            for b in list(net.layer4)[1:]:
                for conv in (b.conv1, b.conv2):
                    conv.dilation, conv.padding = (2, 2), (2, 2)
        return net

    return build


def build(a, data_dir, flags=(), steps=None):
    """Model, LARS optimiser, scheduler and loader as the reference's
    main_pretrain.build_model/main make them, on the CPU; `flags` as in
    reference_options. With `steps`, the learning-rate and momentum
    schedules end after that many steps: the reference counts both in
    epochs, so `--epochs` becomes `steps / len(loader)` (its formulas take a
    fraction) and the momentum's horizon K is set to `steps` (the reference
    computes K with `num_instances / batch_size` batches per epoch, half a
    batch more than its loader gives when the batch does not divide the
    data)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from contrast import models
    from contrast.data import get_loader
    from contrast.lars import LARS, add_weight_decay
    from contrast.lr_scheduler import get_scheduler

    args = reference_options(a, data_dir, flags)
    loader = get_loader(args.aug, args, two_crop=True, prefix="train", return_coord=True)
    if steps is not None:
        args.epochs = steps / len(loader)
    # The reference converts in place and ignores the return value.
    torch.nn.SyncBatchNorm.convert_sync_batchnorm = staticmethod(lambda module, process_group=None: module)
    args.num_instances = len(loader.dataset)
    if a.arch != "resnet50" or a.proj_hidden != 4096:
        # The module, not the class contrast.models re-exports under its name.
        pixpro_module = importlib.import_module("contrast.models.PixPro")
        in_dim = 512 if a.arch == "resnet18" else 2048
        pixpro_module.Proj_Head = functools.partial(pixpro_module.MLP2d, in_dim, a.proj_hidden, 256)
    model = models.__dict__[args.model](encoder_factory(a), args)
    if steps is not None:
        model.K = steps
    params = add_weight_decay(model, args.weight_decay)
    lr = args.batch_size * dist.get_world_size() / 256 * args.base_learning_rate
    optimizer = LARS(torch.optim.SGD(params, lr=lr, momentum=args.momentum))
    if a.device == "cuda":
        model = model.cuda()
        model = DistributedDataParallel(model, device_ids=[0], broadcast_buffers=False)
    else:
        model = DistributedDataParallel(model, broadcast_buffers=False)
    scheduler = get_scheduler(optimizer, len(loader), args)
    return model, optimizer, scheduler, loader


def endless(loader):
    while True:
        yield from loader


def step_times(batch_size, times):
    """What both timed loops report about their steps (`times` in seconds)."""
    import torch

    times_ms = [1e3 * t for t in times]
    median = statistics.median(times_ms)
    return {
        "images_per_sec": batch_size / (median / 1e3),
        "step_ms_median": median,
        "step_ms_min": min(times_ms),
        "step_ms_max": max(times_ms),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }


def train(a, data_dir):
    import torch

    model, optimizer, scheduler, loader = build(a, data_dir)
    model.train()
    batches = endless(loader)
    times, waited = [], 0.0
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        data = next(batches)
        t1 = time.perf_counter()
        # main_pretrain.train's step, with torch.autocast in place of apex.
        if a.device == "cuda":
            data = [item.cuda(non_blocking=True) for item in data]
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = model(data[0], data[1], data[2], data[3])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss.item()
        t2 = time.perf_counter()
        if i >= a.warmup:
            times.append(t2 - t0)
            waited += t1 - t0
    del batches
    return {
        **step_times(a.batch_size, times),
        "data_wait_fraction": waited / sum(times),
        "workers": a.workers,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if a.device == "cuda" else None,
        # DataLoader workers are processes of their own; the largest one's
        # peak (much of it pages shared with this process).
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
    }


def networks_alone(a, data_dir):
    """The part of the reference's step that is its networks' arithmetic:
    the online encoder and projector, forward and backward, on both views
    and the target encoder and projector, forward, on both, on real batches,
    with no PPM, loss, optimiser, momentum update or loader in the timed
    part. Any implementation that runs the same convolutions and BatchNorms
    through torch's kernels needs at least this long per step."""
    import torch

    model, _, _, loader = build(a, data_dir)
    model.train()
    net = model.module
    batches = endless(loader)
    held = [[t.to(a.device) for t in next(batches)[:2]] for _ in range(min(a.warmup + a.steps, 4))]
    # Stops the loader's worker processes before timing.
    del batches
    times = []
    for i in range(a.warmup + a.steps):
        im1, im2 = held[i % len(held)]
        t0 = time.perf_counter()
        net.zero_grad(set_to_none=True)
        p1 = net.projector(net.encoder(im1))
        p2 = net.projector(net.encoder(im2))
        (p1.sum() + p2.sum()).backward()
        with torch.no_grad():
            net.projector_k(net.encoder_k(im1))
            net.projector_k(net.encoder_k(im2))
        if a.device == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        if i >= a.warmup:
            times.append(t1 - t0)
    return step_times(a.batch_size, times)


def data_alone(a, data_dir):
    """The reference's dataset and collate in this process on one thread: a
    DataLoader worker's work, per core."""
    import torch
    from torch.utils.data import default_collate

    torch.set_num_threads(1)
    a.workers = 0
    from contrast.data import get_loader

    args = reference_options(a, data_dir)
    dataset = get_loader(args.aug, args, two_crop=True, prefix="train", return_coord=True).dataset
    rng = random.Random(a.seed)
    order = list(range(len(dataset)))
    rng.shuffle(order)
    n = a.batch_size

    def batch(k):
        idx = [order[(k * n + j) % len(order)] for j in range(n)]
        return default_collate([dataset[i] for i in idx])

    batch(0)
    t0 = time.perf_counter()
    for k in range(1, a.steps + 1):
        batch(k)
    rate = a.steps * n / (time.perf_counter() - t0)
    return {
        "data_images_per_sec": rate,
        "data_images_per_sec_per_worker": rate,
        "workers": 1,
        "batches": a.steps,
        "peak_rss_mb": peak_rss_mb(),
    }


@contextlib.contextmanager
def reference_process(a):
    """This process as one rank of the reference's training: its checkout on
    the import path, the run-time fixes of the module doc, the seeds, the
    one-rank process group; yields the data folder as the reference's
    ImageFolder wants it (`DIR/train/images` linking to --data)."""
    ref = os.path.abspath(a.ref)
    if not os.path.isfile(os.path.join(ref, "contrast", "models", "PixPro.py")):
        sys.exit(f"{ref} is not a checkout of zdaxie/PixPro (no contrast/models/PixPro.py)")
    sys.path.insert(0, ref)
    stub_pycocotools()
    fix_pil_loader()

    import torch
    import torch.distributed as dist

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    if a.device == "cuda":
        torch.cuda.set_device(0)
        torch.backends.cudnn.benchmark = True
    dist.init_process_group(backend="nccl" if a.device == "cuda" else "gloo", rank=0, world_size=1)
    try:
        with tempfile.TemporaryDirectory(prefix="pixpro-ref-") as tmp:
            os.makedirs(os.path.join(tmp, "train"))
            os.symlink(os.path.abspath(a.data), os.path.join(tmp, "train", "images"))
            yield tmp
    finally:
        dist.destroy_process_group()


def main():
    a = parse_args()
    if a.pixpro_malloc:
        pixpro_malloc()
    with reference_process(a) as data_dir:
        report = {"train": train, "networks": networks_alone, "data": data_alone}[a.mode](a, data_dir)
    import torch

    report.update(
        implementation="reference",
        mode=a.mode,
        arch=a.arch,
        image_size=a.image_size,
        batch_size=a.batch_size,
        output_stride=a.output_stride,
        device=a.device,
        precision=a.precision,
        pixpro_malloc=a.pixpro_malloc,
        steps=a.steps,
        torch_version=torch.__version__,
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
