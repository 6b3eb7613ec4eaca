"""End-to-end training throughput, data included, against the PyTorch ImageNet example's pipeline.

    python benchmarks/train.py [--device cpu|cuda] [--steps 8] [--repeats 2] [--copies 32] [--workers N]
                               [--compile]

On the 100 untouched full-size ImageNet photos of ../shared/data/imagenet-samples, each linked `copies`
times into a temporary ImageFolder (3,200 images by default, 100 classes; a multiple of the batch, so
that every step has a whole batch). Each row runs in its own
process, in turns, and reports images/s over the timed steps (after the warm-up steps: 2 on the CPU,
10 on a GPU, where cuDNN times its algorithms first):

- baseline: torchvision's alexnet() fed by the example's input pipeline (ImageFolder, PIL decoding,
  RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize; a DataLoader with `workers`
  processes, all cores by default, kept across epochs; pinned memory on a GPU; batch 128), SGD with
  momentum, float32, as the example runs it;
- ours: `alexnet train`'s own loop (Trainer.train_epoch) on the store that `alexnet prepare` made of
  the same files, with its defaults (`paper`, the §5 update rule, channels-last, the precision that
  "auto" picks on the device), and on the CPU once with bf16 autocast too;
- ours, compute only: the same loop fed one fixed batch, so the gap to the row above is what the
  input pipeline costs; with --compile also under torch.compile.

On a GPU it also prints the compute-only rate in TFLOP/s (three times the forward pass's multiply-adds,
twice each) and as a fraction of the card's bf16 peak, measured here as the rate of an 8192³ bf16
matrix product.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"
BATCH = 128


def make_folder(root: Path, copies: int) -> Path:
    """An ImageFolder of links to the sample photos: train/<wnid>/<copy>_<file>, and a val split."""
    for photo in sorted(SAMPLES.iterdir()):
        wnid = photo.name.split("_")[0]
        for split, n in (("train", copies), ("val", 1)):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for c in range(n):
                (folder / f"{c}_{photo.name}").symlink_to(photo)
    return root


def warmup(device: str) -> int:
    return 10 if device == "cuda" else 2


def baseline(folder: Path, steps: int, device: str, workers: int) -> list[float]:
    """Step times of torchvision's alexnet with the ImageNet example's data loading."""
    import torch
    import torchvision
    from torchvision import transforms

    torch.backends.cudnn.benchmark = True  # as the example sets it
    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    dataset = torchvision.datasets.ImageFolder(str(folder / "train"), transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                                         pin_memory=device == "cuda", persistent_workers=True)
    model = torchvision.models.alexnet(num_classes=len(dataset.classes)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9, weight_decay=1e-4)
    times, start = [], time.perf_counter()
    while len(times) < steps + warmup(device):
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the example reads the loss every step (its AverageMeter)
            now = time.perf_counter()
            times.append(now - start)
            start = now
            if len(times) == steps + warmup(device):
                break
    return times[warmup(device):]


def ours(store: Path, steps: int, device: str, precision: str, compute_only: bool, compile: bool) -> list[float]:
    """Step times of `alexnet train`'s loop on the store (or on one fixed batch)."""
    import torch

    import alexnet.training as training
    from alexnet.config import TrainConfig
    from alexnet.runtime import tune_process

    cfg = TrainConfig(data=str(store), epochs=1000, device=device, precision=precision, progress=False, save_every=0)
    tune_process(device)  # as `alexnet train` sets the process up
    trainer = training.Trainer(cfg, training.open_data(cfg), Path(tempfile.mkdtemp()))
    if compute_only:
        images, labels, indices = next(iter(trainer.data.train.epoch(0)))
        trainer.data.train.epoch = lambda epoch, start=0: iter([(images, labels, indices)] * len(trainer.data.train))
    net = torch.compile(trainer.model) if compile else trainer.model
    times, last = [], [time.perf_counter()]
    original = trainer.optimizer.step

    def timed_step(*args, **kwargs):  # the time between optimizer steps is the time of a whole step
        result = original(*args, **kwargs)
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        return result

    trainer.optimizer.step = timed_step
    while len(times) < steps + warmup(device):
        trainer.train_epoch(net)
        trainer.epoch, trainer.step = trainer.epoch + 1, 0
    if device == "cuda":  # the loop reads the loss every step, so the last step is done but for its update
        torch.cuda.synchronize()
    return times[warmup(device):steps + warmup(device)]


def child(args: argparse.Namespace) -> None:
    """Run one measurement in this process and print its step times as JSON."""
    kind, path, precision = args.child
    if kind == "baseline":
        times = baseline(Path(path), args.steps, args.device, args.workers)
    else:
        times = ours(Path(path), args.steps, args.device, precision, compute_only=kind != "ours",
                     compile=kind == "compiled")
    print(json.dumps(times))


def bf16_peak() -> float:
    """The rate of an 8192³ bf16 matrix product on this GPU, in FLOP/s (mean of ten after three warm-ups)."""
    import torch

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--copies", type=int, default=32, help="links to each photo (a multiple of 32)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="the baseline's DataLoader processes (default: all cores)")
    parser.add_argument("--compile", action="store_true", help="also time the compute-only loop under torch.compile")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not SAMPLES.is_dir():
        sys.exit(f"{SAMPLES} is not present")
    if 100 * args.copies % BATCH:
        sys.exit("--copies must be a multiple of 32, so that every batch is whole")
    import torch

    from alexnet.data.store import prepare
    from alexnet.record import NetworkRecord, build_model
    from alexnet.runtime import choose_device, choose_precision
    from alexnet.summary import layer_table

    device = choose_device(args.device)
    auto = choose_precision("auto", device).name  # on a CPU: fp32 (the rows run bf16 as well)
    precisions = list(dict.fromkeys([auto] + (["bf16"] if args.device == "cpu" else [])))
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {len(os.sched_getaffinity(0))} cores"
    print(f"{name}; torch {torch.__version__}; {100 * args.copies} training images, batch {BATCH}, "
          f"{args.steps} timed steps × {args.repeats} repeats; baseline workers {args.workers}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / "photos", args.copies)
        store = prepare(folder, Path(tmp) / "store", progress=False).path
        rows = [("baseline: torchvision alexnet + the example's loader", "baseline", folder, "fp32")]
        for precision in precisions:
            rows += [(f"ours: alexnet train loop, store, {precision}", "ours", store, precision),
                     (f"ours: compute only, {precision}", "compute", store, precision)]
        if args.compile:
            rows.append((f"ours: compute only, {auto}, torch.compile", "compiled", store, auto))
        times: dict[str, list[float]] = {row[0]: [] for row in rows}
        for _ in range(args.repeats):
            for label, kind, path, precision in rows:
                out = subprocess.run([sys.executable, __file__, "--child", kind, str(path), precision, "--device",
                                      args.device, "--steps", str(args.steps), "--workers", str(args.workers)],
                                     capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{label} failed:\n{out.stderr[-3000:]}")
                times[label] += json.loads(out.stdout.strip().splitlines()[-1])
                print(f"  {label}: {BATCH * len(times[label]) / sum(times[label]):.1f} img/s so far", file=sys.stderr)
    rate = {label: BATCH * len(t) / sum(t) for label, t in times.items()}
    base = rate[rows[0][0]]
    print(f"{'pipeline':<56}{'img/s':>9}{'× baseline':>12}{'× compute':>11}")
    for label, kind, _, precision in rows:
        compute = rate.get(f"ours: compute only, {precision}")
        vs_compute = f"{rate[label] / compute:>11.2f}" if kind == "ours" and compute else ""
        print(f"{label:<56}{rate[label]:>9.1f}{rate[label] / base:>12.2f}{vs_compute}")
    if args.device == "cuda":
        model = build_model(NetworkRecord.of("paper", 100))
        flops = 6 * sum(row.macs for row in layer_table(model, 224))  # per training image
        peak = bf16_peak()
        for label in rate:
            if "compute only" in label:
                achieved = rate[label] * flops
                print(f"{label}: {achieved / 1e12:.1f} TFLOP/s, {100 * achieved / peak:.1f}% of the measured bf16 "
                      f"peak ({peak / 1e12:.0f} TFLOP/s)")


if __name__ == "__main__":
    main()
