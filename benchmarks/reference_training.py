"""The comparison for README's accuracy run: torchvision's alexnet trained with the PyTorch ImageNet
example's recipe, for a fixed time budget, on an ImageFolder with train/ and val/.

    python benchmarks/reference_training.py DATA [--minutes 60] [--workers 2]

The recipe, as the example has it for AlexNet: batch 256, SGD with learning rate 0.01, momentum 0.9,
weight decay 1e-4, the rate divided by 10 every 30 epochs (StepLR); training input RandomResizedCrop(224)
and a horizontal flip, validation input Resize(256) and CenterCrop(224), both normalized by ImageNet's
channel mean and std. Epochs run while the next one is expected to end within the budget; after each,
the validation top-1/top-5 error of the centre crop is printed. (This is a re-statement of the
example's recipe, not its code.)
"""

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision
from torchvision import transforms

from alexnet.evaluate import wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    train_set = torchvision.datasets.ImageFolder(f"{args.data}/train", transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]))
    val_set = torchvision.datasets.ImageFolder(f"{args.data}/val", transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize]))
    train_loader = torch.utils.data.DataLoader(train_set, 256, shuffle=True, num_workers=args.workers)
    val_loader = torch.utils.data.DataLoader(val_set, 256, num_workers=args.workers)
    model = torchvision.models.alexnet(num_classes=len(train_set.classes))
    optimizer = torch.optim.SGD(model.parameters(), 0.01, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, 30, 0.1)
    start, epoch, longest = time.monotonic(), 0, 0.0
    print(f"torchvision alexnet, {len(train_set)} training and {len(val_set)} validation images, "
          f"{len(train_set.classes)} classes, {args.minutes:g} minutes", flush=True)
    while time.monotonic() - start + longest <= 60 * args.minutes:
        began = time.monotonic()
        model.train()
        loss_sum, seen = 0.0, 0
        for images, labels in train_loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum, seen = loss_sum + loss.item() * len(labels), seen + len(labels)
        schedule.step()
        model.eval()
        w1 = w5 = n = 0
        with torch.no_grad():
            for images, labels in val_loader:
                a, b = wrong(F.softmax(model(images), 1), labels)
                w1, w5, n = w1 + a, w5 + b, n + len(labels)
        epoch += 1
        longest = max(longest, time.monotonic() - began)
        print(f"epoch {epoch}: train loss {loss_sum / seen:.3f}; val top-1 error {100 * w1 / n:.2f}%, "
              f"top-5 {100 * w5 / n:.2f}%; {time.monotonic() - began:.0f} s; "
              f"{(time.monotonic() - start) / 60:.1f} min in all", flush=True)


if __name__ == "__main__":
    main()
