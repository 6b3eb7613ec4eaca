"""End-to-end training throughput, data included, against the PyTorch ImageNet example's pipeline.

    python benchmarks/train.py [--steps 8] [--repeats 2]

On the 100 untouched full-size ImageNet photos of ../shared/data/imagenet-samples, each linked 13
times into a temporary ImageFolder (1,300 images, 100 classes). Each row runs in its own process on
all cores, in turns, and reports the median images/s over the timed steps (after two warm-up steps):

- baseline: torchvision's alexnet() fed by the example's input pipeline (ImageFolder, PIL decoding,
  RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize; a DataLoader with 2 worker
  processes, batch 128), SGD with momentum, float32, as the example runs it;
- ours: `alexnet train`'s own loop (Trainer.train_epoch) on the store that `alexnet prepare` made of
  the same files, with its defaults (`paper`, the §5 update rule, channels-last, the precision that
  "auto" picks on this machine), once with bf16 autocast too;
- ours, compute only: the same loop fed one fixed batch, so the gap to the row above is what the
  input pipeline costs.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"
COPIES = 13


def make_folder(root: Path) -> Path:
    """An ImageFolder of links to the sample photos: train/<wnid>/<copy>_<file>, and a val split."""
    for photo in sorted(SAMPLES.iterdir()):
        wnid = photo.name.split("_")[0]
        for split, copies in (("train", COPIES), ("val", 1)):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for c in range(copies):
                (folder / f"{c}_{photo.name}").symlink_to(photo)
    return root


def baseline(folder: Path, steps: int) -> list[float]:
    """Step times of torchvision's alexnet with the ImageNet example's data loading."""
    import torch
    import torchvision
    from torchvision import transforms

    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    dataset = torchvision.datasets.ImageFolder(str(folder / "train"), transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=True, num_workers=2)
    model = torchvision.models.alexnet(num_classes=len(dataset.classes))
    optimizer = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9, weight_decay=1e-4)
    times, start = [], time.perf_counter()
    while len(times) < steps + 2:
        for images, labels in loader:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            now = time.perf_counter()
            times.append(now - start)
            start = now
            if len(times) == steps + 2:
                break
    return times[2:]


def ours(store: Path, steps: int, precision: str, compute_only: bool) -> list[float]:
    """Step times of `alexnet train`'s loop on the store (or on one fixed batch)."""
    import alexnet.train as training

    cfg = training.TrainConfig(data=str(store), epochs=1000, precision=precision, progress=False, save_every=0)
    trainer = training.Trainer(cfg, Path(tempfile.mkdtemp()), 0, 1, 0)
    if compute_only:
        images, labels, indices = next(iter(trainer.data.train.epoch(0)))
        trainer.data.train.epoch = lambda epoch, start=0: iter([(images, labels, indices)] * len(trainer.data.train))
    times, last = [], [time.perf_counter()]
    original = trainer.optimizer.step

    def timed_step(*args, **kwargs):  # the time between optimizer steps is the time of a whole step
        result = original(*args, **kwargs)
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        return result

    trainer.optimizer.step = timed_step
    while len(times) < steps + 2:
        trainer.train_epoch(trainer.model)
        trainer.epoch, trainer.step = trainer.epoch + 1, 0
    return times[2:steps + 2]


def child(kind: str, path: str, steps: int, precision: str) -> None:
    """Run one measurement in this process and print its step times as JSON."""
    if kind == "baseline":
        times = baseline(Path(path), steps)
    else:
        times = ours(Path(path), steps, precision, compute_only=kind == "compute")
    print(json.dumps(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path, steps, precision = args.child
        child(kind, path, int(steps), precision)
        return
    if not SAMPLES.is_dir():
        sys.exit(f"{SAMPLES} is not present")
    from alexnet.data.store import prepare
    from alexnet.runtime import choose_device, choose_precision

    auto = choose_precision("auto", choose_device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / "photos")
        store = prepare(folder, Path(tmp) / "store", progress=False).path
        rows = [("baseline: torchvision alexnet + the example's loader", "baseline", folder, "fp32"),
                (f"ours: alexnet train loop, store, {auto}", "ours", store, auto),
                (f"ours: compute only, {auto}", "compute", store, auto),
                ("ours: alexnet train loop, store, bf16", "ours", store, "bf16"),
                ("ours: compute only, bf16", "compute", store, "bf16")]
        times: dict[str, list[float]] = {name: [] for name, *_ in rows}
        for _ in range(args.repeats):
            for name, kind, path, precision in rows:
                out = subprocess.run([sys.executable, __file__, "--child", kind, str(path), str(args.steps),
                                      precision], capture_output=True, text=True, check=True).stdout
                times[name] += json.loads(out.strip().splitlines()[-1])
                print(f"  {name}: {128 / statistics.median(times[name]):.1f} img/s so far", file=sys.stderr)
    rate = {name: 128 / statistics.median(t) for name, t in times.items()}
    base = rate[rows[0][0]]
    print(f"{'pipeline':<56}{'img/s':>8}{'× baseline':>12}{'× compute':>11}")
    for name, kind, _, precision in rows:
        compute = rate.get(f"ours: compute only, {precision}")
        vs_compute = f"{rate[name] / compute:>11.2f}" if kind == "ours" and compute else ""
        print(f"{name:<56}{rate[name]:>8.1f}{rate[name] / base:>12.2f}{vs_compute}")


if __name__ == "__main__":
    main()
