"""The `alexnet` command: argument parsing only; each subcommand calls one function of the library."""

import argparse
import sys

from .model import ARCHS, INITS


def _summary(args: argparse.Namespace) -> None:
    import torch

    from .model import build_model
    from .summary import format_table, layer_table

    with torch.device("meta"):
        model = build_model(args.arch, args.classes, lrn=args.lrn)
    table = format_table(layer_table(model, args.image_size), args.image_size)
    print(f"AlexNet {args.arch!r}, {args.classes} classes, input 3×{args.image_size}×{args.image_size}")
    print(table)


def _prepare(args: argparse.Namespace) -> None:
    from .data.store import prepare

    prepare(args.src, args.dst, size=args.size, shard_size=args.shard_size, workers=args.workers,
            label_file=args.labels)


def _train(args: argparse.Namespace) -> None:
    import os

    from .train import TrainConfig, final_evaluation, train

    cfg = TrainConfig(**{f: getattr(args, f) for f in TrainConfig.__dataclass_fields__})
    run = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    print(f"evaluating the best checkpoint of {run} on the validation images ...", flush=True)
    for crops, errors in final_evaluation(run).items():
        print(f"  {'centre crop' if crops == 1 else 'ten crops  '}: {errors.line()}")
    data = f" --data {args.data}" if args.data else ""
    print(f"""next:
  alexnet predict {run}/best.pt IMAGE.jpg ...      top-5 classes of your own photos
  alexnet eval {run}/best.pt{data} --crops 10   the evaluation again (several checkpoints: an ensemble)
  alexnet train --resume {run} --epochs N      train longer
  alexnet prepare IMAGENET_ROOT STORE && alexnet train --data STORE      a real data set""")


def _eval(args: argparse.Namespace) -> None:
    import json

    from .evaluate import evaluate_checkpoints

    errors = evaluate_checkpoints(args.checkpoints, args.data, args.split, args.crops, args.batch_size,
                                  args.device, args.precision, progress=not args.json)
    if args.json:
        print(json.dumps({"checkpoints": args.checkpoints, "crops": args.crops, "images": errors.count,
                          "top1_error": errors.top1, "top5_error": errors.top5}))
    else:
        members = "an ensemble of " + str(len(args.checkpoints)) if len(args.checkpoints) > 1 else "one network"
        print(f"{members}, {'ten crops' if args.crops == 10 else 'centre crop'}: {errors.line()}")


def _predict(args: argparse.Namespace) -> None:
    import json

    from .evaluate import predict_images

    results = predict_images(args.checkpoint, args.images, args.crops)
    if args.json:
        print(json.dumps([{"image": image, "top5": [{"class": name, "probability": p} for name, p in top]}
                          for image, top in results]))
        return
    for image, top in results:
        print(image)
        for name, p in top:
            print(f"  {100 * p:5.1f}%  {name}")


def _parser() -> argparse.ArgumentParser:
    from .lrn import MODES

    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="alexnet", formatter_class=fmt,
        description="AlexNet (Krizhevsky, Sutskever, Hinton 2012) as the paper specifies it.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("summary", formatter_class=fmt, help="print the layer table",
                            description="Each layer's output shape, parameters and multiply-adds, with totals.")
    p.add_argument("--arch", choices=ARCHS, default="paper", help="network variant")
    p.add_argument("--classes", type=int, default=1000, help="number of classes")
    p.add_argument("--image-size", type=int, default=227, help="input height and width")
    p.add_argument("--lrn", choices=MODES, default=None, help="LRN formula (default: the architecture's own)")
    p.set_defaults(run=_summary)

    p = commands.add_parser("prepare", formatter_class=fmt, help="preprocess an image folder into a fast store",
                            description="Rescale every image's shorter side to 256 and keep the central 256×256 "
                                        "(§2), into uint8 shards; compute the training set's mean image and RGB "
                                        "PCA. An interrupted run finishes when started again.")
    p.add_argument("src", help="image folder: ROOT/train/<class>/*, ROOT/val/..., or ROOT/<class>/*")
    p.add_argument("dst", help="store folder to write")
    p.add_argument("--shard-size", type=int, default=4096, help="images per shard file")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per core)")
    p.add_argument("--labels", default=None, help="label file of a flat validation folder (default: found in SRC)")
    p.add_argument("--size", type=int, default=256, help="side of the stored square images")
    p.set_defaults(run=_prepare)

    from .optim import SCHEDULES
    from .runtime import PRECISIONS
    from .train import DEFAULT_EPOCHS, PAPER_EPOCHS

    p = commands.add_parser("train", formatter_class=fmt, help="train with the paper's recipe (the main job)",
                            description="Train AlexNet with the paper's recipe (§5): SGD with momentum 0.9 and "
                                        "weight decay 5e-4, batch 128, learning rate 0.01 divided by 10 when the "
                                        "validation error stops improving. With no --data, on the built-in photos.")
    p.add_argument("--data", default=None, help="a store from `alexnet prepare`, or an image folder with train/ "
                                                "and val/ (default: the built-in photos)")
    p.add_argument("--arch", choices=ARCHS, default="paper", help="network variant")
    p.add_argument("--lrn", choices=MODES, default=None, help="LRN formula (default: the architecture's own)")
    p.add_argument("--init", choices=INITS, default=None, help="initialization (default: the architecture's own)")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout probability on fc6 and fc7")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs (default: {PAPER_EPOCHS}, or {DEFAULT_EPOCHS} on the built-in photos)")
    p.add_argument("--batch-size", type=int, default=128, help="images per step, over all processes")
    p.add_argument("--lr", type=float, default=0.01, help="initial learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="momentum")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay")
    p.add_argument("--optimizer", choices=("paper", "sgd"), default="paper",
                   help="paper: §5's update rule; sgd: torch.optim.SGD")
    p.add_argument("--schedule", choices=SCHEDULES, default="plateau", help="learning-rate schedule")
    p.add_argument("--patience", type=int, default=2, help="plateau: epochs without improvement before a drop")
    p.add_argument("--min-delta", type=float, default=0.0, help="plateau: the least improvement that counts")
    p.add_argument("--max-drops", type=int, default=3, help="plateau: at most this many drops")
    p.add_argument("--step-size", type=int, default=30, help="step: epochs between drops")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up, in epochs")
    p.add_argument("--crop", type=int, choices=(224, 227), default=224, help="training crop size")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 on GPUs and AMX CPUs, fp32 elsewhere; fp16 uses loss scaling")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep tensors in NCHW memory order")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--workers", type=int, default=2, help="decoding processes when reading JPEG folders")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", default="runs", help="folder for run folders")
    p.add_argument("--name", default=None, help="run folder name (default: date-time-arch)")
    p.add_argument("--save-every", type=float, default=10.0, help="minutes between mid-epoch checkpoints")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--resume", default=None, help="a run folder (or checkpoint) to continue exactly")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(run=_train)

    p = commands.add_parser("eval", formatter_class=fmt, help="top-1/top-5 error of checkpoints",
                            description="Top-1 and top-5 error on a split, with the centre crop or the ten "
                                        "patches of §4.1; several checkpoints average their softmax outputs.")
    p.add_argument("checkpoints", nargs="+", help="checkpoint files or run folders")
    p.add_argument("--data", default=None, help="a store or an image folder (default: the built-in photos)")
    p.add_argument("--split", default="val", help="split to evaluate")
    p.add_argument("--crops", type=int, choices=(1, 10), default=1, help="1: centre crop; 10: ten patches")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="arithmetic precision")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=_eval)

    p = commands.add_parser("predict", formatter_class=fmt, help="top-5 classes of images",
                            description="The five most probable classes of each image, with probabilities.")
    p.add_argument("checkpoint", help="a checkpoint file or run folder")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--crops", type=int, choices=(1, 10), default=10, help="1: centre crop; 10: ten patches")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=_predict)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the subcommand; bad input ends in one line on stderr and exit 2."""
    from .train import DivergedError

    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as err:
        print(f"alexnet {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except DivergedError as err:
        print(f"alexnet {args.command}: stopped: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
