"""The `alexnet` command: argument parsing only; each subcommand calls one function of the library."""

import argparse
import sys

from .model import ARCHS


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


def _experiment(args: argparse.Namespace) -> None:
    from .experiments import ExperimentConfig, run_experiment

    run_experiment(ExperimentConfig(args.experiment, args.data, args.out, args.epochs, args.batch_size, args.seed,
                                    args.cache, args.threads))


def _threads(text: str) -> int | None:
    """--threads: "auto" (None) or a number."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


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

    from .experiments import CORES, DEFAULT_CACHE, EXPERIMENTS

    p = commands.add_parser("experiment", formatter_class=fmt, help="the paper's small-scale CIFAR-10 experiments",
                            description="Train two variants of a four-layer CNN on CIFAR-10 (class folders of 32×32 "
                                        "images) on the CPU; write their curves, a figure and a table.")
    experiments = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, setup in EXPERIMENTS.items():
        e = experiments.add_parser(name, formatter_class=fmt, help=setup.title,
                                   description=f"{setup.title}: {' against '.join(v.label for v in setup.variants)}. "
                                               f"The paper: {setup.paper}.")
        e.add_argument("--data", required=True, default=argparse.SUPPRESS,
                       help="CIFAR-10 folder: DATA/train/<class>/*, DATA/test/<class>/* (or DATA/val/<class>/*); "
                            "required")
        e.add_argument("--epochs", type=int, default=setup.epochs, help="epochs per network")
        e.add_argument("--batch-size", type=int, default=128, help="images per mini-batch")
        e.add_argument("--out", default=f"runs/experiments/{name}", help="folder for the figure, curves and results")
        e.add_argument("--seed", type=int, default=0, help="seed of the initial weights, batch order and flips")
        e.add_argument("--cache", default=DEFAULT_CACHE, help="folder for the decoded images (.npz)")
        e.add_argument("--threads", type=_threads, default="auto",
                       help=f"CPU threads; auto: {CORES} (one per core) or 1, whichever trains "
                            "faster, chosen again each epoch (on a busy machine 1 can be much faster)")
    p.set_defaults(run=_experiment)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the subcommand; bad input ends in one line on stderr and exit 2."""
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as err:
        print(f"alexnet {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
