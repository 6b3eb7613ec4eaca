"""The `alexnet` command: argument parsing only; each subcommand calls one function of the library. A command's
arguments are declared by a dataclass in its own module (options.add_options makes them options), and that
module is imported only when the command runs or shows its help."""

import argparse
import errno
import os
import sys
from collections.abc import Callable

TRACEBACK = "ALEXNET_TRACEBACK"  # set to show the traceback of a bad-input or environment error
# what the system says of a path the user gave that it cannot write: bad input, one line, exit status 2
REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}
# what the system says when it runs out of room: a failing environment, one line, exit status 1
EXHAUSTED = {errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM}


def _summary(args: argparse.Namespace) -> None:
    import torch

    from .record import NetworkRecord, build_model
    from .summary import format_table, layer_table

    with torch.device("meta"):
        model = build_model(NetworkRecord.of(args.arch, args.classes, lrn=args.lrn))
    table = format_table(layer_table(model, args.image_size), args.image_size)
    print(f"AlexNet {args.arch!r}, {args.classes} classes, input 3×{args.image_size}×{args.image_size}")
    print(table)


def _prepare(args: argparse.Namespace) -> None:
    from .data.store import prepare

    prepare(args.src, args.dst, size=args.size, shard_size=args.shard_size, workers=args.workers,
            label_file=args.labels, overwrite=args.overwrite, val_fraction=args.val_fraction)


def _download(args: argparse.Namespace) -> None:
    from .download import ARCHIVES, download

    folder = download(args.name, args.dst, args.prepare, progress=args.progress)
    if ARCHIVES[args.name].layout == "cifar":
        hint = f"alexnet experiment relu-vs-tanh --data {folder}"
    else:
        hint = f"alexnet train --data {args.prepare}" if args.prepare else f"alexnet prepare {folder} STORE"
    print(f"{args.name} is ready in {folder}; next: {hint}")


def _train(args: argparse.Namespace) -> None:
    from . import checkpoint
    from .config import TrainConfig
    from .files import read_json
    from .final_evaluation import final_evaluation
    from .options import from_args
    from .run_folder import CONFIG
    from .runtime import tune_process
    from .training import train

    cfg = from_args(TrainConfig, args)
    tune_process(cfg.device)
    run = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    best = checkpoint.of_run(run)
    print(f"evaluating {best} on the validation images ...", flush=True)
    for crops, errors in final_evaluation(best).items():
        print(f"  {'centre crop' if crops == 1 else 'ten crops  '}: {errors.line()}")
    saved = read_json(run / CONFIG)["data"]  # a resumed run's own, which its command line need not name
    data = f" --data {saved}" if saved else ""
    hints = [(f"alexnet predict {best} IMAGE.jpg ...", "top-5 classes of your own photos"),
             (f"alexnet eval {best}{data} --crops 10", "the evaluation again (more checkpoints: an ensemble)"),
             (f"alexnet train --resume {run} --epochs N", "train longer"),
             ("alexnet prepare IMAGENET_ROOT STORE && alexnet train --data STORE", "a real data set")]
    width = max(len(command) for command, _ in hints)
    print("next:\n" + "\n".join(f"  {command:<{width}}   {what}" for command, what in hints))


def _eval(args: argparse.Namespace) -> None:
    import json

    from .evaluate import evaluate_checkpoints, write_per_class
    from .runtime import tune_process

    tune_process(args.device)
    errors = evaluate_checkpoints(args.checkpoints, args.data, args.split, args.crops, args.batch_size,
                                  args.device, args.precision, progress=not args.json,
                                  per_class=args.per_class is not None)
    written = write_per_class(errors.per_class, args.per_class) if args.per_class else ()
    if args.json:
        print(json.dumps({"checkpoints": args.checkpoints, "crops": args.crops, "images": errors.count,
                          "top1_error": errors.top1, "top5_error": errors.top5,
                          **({"per_class": str(written[0]), "confusion": str(written[1])} if written else {})}))
    else:
        members = "an ensemble of " + str(len(args.checkpoints)) if len(args.checkpoints) > 1 else "one network"
        print(f"{members}, {'ten crops' if args.crops == 10 else 'centre crop'}: {errors.line()}")
        if written:
            print(f"wrote {written[0]} (per class) and {written[1]} (confusion matrix)")


def _predict(args: argparse.Namespace) -> None:
    import json

    from .errors import InputError, printable
    from .evaluate import predict, predict_csv, top5_records

    if args.csv:
        if args.plot:
            raise InputError("--plot draws the images it prints; with --csv nothing is printed")
        written, before, unreadable = predict_csv(args.checkpoint, args.images, args.csv, args.crops, args.batch_size,
                                                  args.device, args.precision,
                                                  progress=not args.json and sys.stderr.isatty())
        if args.json:
            print(json.dumps({"csv": args.csv, "rows": before + written, "written": written,
                              "unreadable": unreadable}))
        else:
            again = f" after the {before} there" if before else ""
            bad = f", {unreadable} of them for images that could not be read" if unreadable else ""
            print(f"wrote {written} rows to {printable(args.csv)}{again}{bad}")
        return
    predictions = predict(args.checkpoint, args.images, args.crops, args.device, args.precision)
    if args.plot:
        from .figures import plot_predictions

        plot_predictions(predictions, args.plot, args.plot_columns)
    results = predictions.top5()
    if args.json:
        print(json.dumps([{"image": image, "top5": top5_records(top)} for image, top in results]))
        return
    for image, top in results:
        print(printable(image))
        for name, p in top:
            print(f"  {100 * p:5.1f}%  {name}")


def _filters(args: argparse.Namespace) -> None:
    from .figures import plot_filters

    print(f"wrote {plot_filters(args.checkpoint, args.out, args.columns, args.zoom, args.gap)}")


def _features(args: argparse.Namespace) -> None:
    from .features import extract_features
    from .runtime import tune_process

    tune_process(args.device)
    extract_features(args.checkpoint, args.data, args.out, args.split, args.batch_size, args.device, args.precision,
                     args.workers, progress=args.progress)


def _neighbors(args: argparse.Namespace) -> None:
    import json

    from .errors import printable
    from .figures import plot_neighbors
    from .neighbors import find_neighbors

    found = find_neighbors(args.checkpoint, args.queries, args.features, args.k, args.chunk, args.device)
    if args.out:
        plot_neighbors(found, args.out)
    records = found.records()
    if args.json:
        print(json.dumps(records))
        return
    for record in records:
        print(printable(record["query"]) + (f" ({record['class']})" if record["class"] else ""))
        for n in record["neighbors"]:
            print(f"  {n['rank']}. {n['distance']:10.4f}  {n['class']:<20}  {printable(n['file'])}")
    if args.out:
        print(f"wrote {args.out}")


def _serve(args: argparse.Namespace) -> None:
    from .options import from_args
    from .runtime import tune_process
    from .serve import ServeConfig, serve

    tune_process(args.device)
    serve(from_args(ServeConfig, args))


def _export(args: argparse.Namespace) -> None:
    from .export import check, export

    meta = export(args.checkpoint, args.out, args.format, args.overwrite)
    print(f"wrote {args.out}: {meta['arch']!r}, {len(meta['classes'])} classes, {meta['num_params']:,} parameters, "
          f"{meta['multiply_adds']:,} multiply-adds an image")
    if args.check:
        print(check(args.checkpoint, args.out).line())


def _import_torchvision(args: argparse.Namespace) -> None:
    from .errors import InputError
    from .export import download_torchvision, import_torchvision

    if args.download == (args.weights is not None):
        raise InputError("give either a weights file (WEIGHTS OUT) or --download (--download OUT)")
    if args.download:
        record = download_torchvision(args.out, args.progress)
    else:
        record = import_torchvision(args.weights, args.out)
    print(f"wrote {args.out}: torchvision's {record.arch!r} with ImageNet's {len(record.classes)} classes; next: "
          f"alexnet predict {args.out} IMAGE.jpg")


def _experiment(args: argparse.Namespace) -> None:
    from .ablations import STUDIES, StudyConfig, run_study
    from .experiments import ExperimentConfig, run_experiment
    from .options import from_args
    from .runtime import keep_freed_memory

    keep_freed_memory()
    if args.experiment in STUDIES:
        run_study(from_args(StudyConfig, args, study=args.experiment))
    else:
        run_experiment(from_args(ExperimentConfig, args))


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already says it, it is a switch or it must be given; no
    default is "none"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if "default" in (action.help or "") or action.nargs == 0 or action.required:
            return action.help or ""
        if action.default is None and action.option_strings:
            return f"{action.help} (default: none)"
        return super()._get_help_string(action)


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line: every command with its arguments, or where `command` is given, that command's alone and
    the others listed by name, so that a command imports its own module and no other command's."""
    from .options import Parser, add_options

    fmt = _Help
    parser = Parser(prog="alexnet", formatter_class=fmt,
                    description="AlexNet (Krizhevsky, Sutskever, Hinton 2012) as the paper specifies it.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help=f"show the traceback of a bad-input or environment error too (or set {TRACEBACK}=1)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, run: Callable[[argparse.Namespace], None]) -> argparse.ArgumentParser | None:
        """List the command `name`; its parser, to add its arguments to, where they are wanted (else None)."""
        p = commands.add_parser(name, formatter_class=fmt, help=help)
        p.set_defaults(run=run)
        return p if command in (None, name) else None

    if p := add("summary", "print the layer table", _summary):
        from .summary import SummaryConfig

        p.description = "Each layer's output shape, parameters and multiply-adds, with totals."
        add_options(p, SummaryConfig)

    if p := add("prepare", "preprocess an image folder into a fast store", _prepare):
        from .data.folders import SIDE
        from .data.store import PrepareConfig

        p.description = (f"Rescale every image's shorter side to {SIDE} and keep the central {SIDE}×{SIDE} (§2), "
                         "into uint8 shards; compute the training set's mean image and RGB PCA. An interrupted run "
                         "finishes when started again.")
        add_options(p, PrepareConfig)

    if p := add("download", "download Imagenette, Imagewoof or CIFAR-10, verified", _download):
        from .download import BASE_URL_VARIABLE, DownloadConfig

        p.description = ("Download a data set from its publisher into DST (an interrupted download continues), "
                         "check its published size and checksum (SHA-256, or MD5 where only that is published), "
                         "and unpack it: Imagenette and Imagewoof into DST/NAME/{train,val}/<wnid>/*.JPEG, "
                         f"CIFAR-10 into DST/{{train,test}}/<class>/*.png. {BASE_URL_VARIABLE}=URL takes the same "
                         "file names from a mirror.")
        add_options(p, DownloadConfig)

    if p := add("train", "train with the paper's recipe (the main job)", _train):
        from .config import TrainConfig
        from .options import resume_rules

        p.description = ("Train AlexNet with the paper's recipe (§5): SGD with momentum 0.9 and weight decay 5e-4, "
                         "batch 128, learning rate 0.01 divided by 10 when the validation error stops improving. "
                         "With no --data, on the built-in photos. On several processes: torchrun --nproc_per_node "
                         "N -m alexnet train ..., with --parallel towers the paper's two towers on each pair (§3.2).")
        p.epilog = resume_rules(TrainConfig)
        add_options(p, TrainConfig)

    if p := add("eval", "top-1/top-5 error of checkpoints", _eval):
        from .evaluate import EvalConfig

        p.description = ("Top-1 and top-5 error on a split, with the centre crop or the ten patches of §4.1; "
                         "several checkpoints average their softmax outputs.")
        add_options(p, EvalConfig)

    if p := add("predict", "top-5 classes of images", _predict):
        from .evaluate import PredictConfig

        p.description = "The five most probable classes of each image, with probabilities."
        add_options(p, PredictConfig)

    if p := add("filters", "draw conv1's kernels (Figure 3)", _filters):
        from .figures import FiltersConfig

        p.description = ("The first layer's kernels as images (§6.1, Figure 3), one block per tower, each kernel "
                         "min-max scaled on its own.")
        add_options(p, FiltersConfig)

    if p := add("features", "fc7 features of every image of a split", _features):
        from .features import FeaturesConfig

        p.description = ("The fc7 activations (after ReLU; 4096 of them in the paper's network) of the centre crop "
                         "of every image of a split, with labels and files, into a folder that `alexnet neighbors` "
                         "searches (§6.1). An interrupted run continues where it stopped.")
        add_options(p, FeaturesConfig)

    if p := add("neighbors", "nearest images by fc7 distance (Figure 4)", _neighbors):
        from .neighbors import NeighborsConfig

        p.description = ("For each query image, the images of a features folder whose fc7 features are nearest in "
                         "Euclidean distance (§6.1, Figure 4 right): exact search in chunks, so memory stays small "
                         "however many features there are.")
        add_options(p, NeighborsConfig)

    if p := add("serve", "Figure 4 as a web page and a JSON API", _serve):
        from .serve import ServeConfig

        p.description = ("Serve a web page (choose or drop a photo: its top-5 classes as bars and, with --features, "
                         "its nearest images) and a JSON API: POST /predict, GET /health, /info, /docs. Requests "
                         "that arrive together run as one batch.")
        add_options(p, ServeConfig)

    if p := add("export", "a checkpoint as safetensors, ONNX or torch.export", _export):
        from .export import ExportConfig

        p.description = ("Write a checkpoint's network with its metadata (architecture, LRN formula, parameters, "
                         "multiply-adds, classes, preprocessing, the accuracy measured): safetensors (which every "
                         "command taking a checkpoint takes), ONNX with a dynamic batch dimension, or a "
                         "torch.export program (.pt2, loadable without this package).")
        add_options(p, ExportConfig)

    if p := add("import-torchvision", "torchvision's alexnet weights as a checkpoint", _import_torchvision):
        from .export import ImportTorchvisionConfig

        p.description = ("Make a checkpoint of a torchvision.models.alexnet() state dict (such as torchvision's "
                         "alexnet-owt-7be5be79.pth): the 'owt' network with ImageNet's 1000 class names and "
                         "torchvision's preprocessing (shorter side 256, centre crop 224, its mean and std), for "
                         "eval, predict, features, neighbors and export; with --download, torchvision's published "
                         "ImageNet weights, fetched and hash-checked by torchvision's weights API.")
        add_options(p, ImportTorchvisionConfig)

    if p := add("experiment", "the paper's claims as experiments, with seeds", _experiment):
        from .ablations import STUDIES, StudyConfig
        from .experiments import EXPERIMENTS, ExperimentConfig
        from .report import out_folder

        p.description = ("Train the variants of a network that a claim of the paper is about, from the same "
                         "initial weights through the same mini-batches, for several seeds; write their curves, a "
                         "figure and a table. relu-vs-tanh, lrn, pooling: a four-layer CNN on CIFAR-10 (class "
                         f"folders of 32×32 images) on the CPU; {', '.join(STUDIES)}: AlexNet on a store from "
                         "`alexnet prepare`.")
        experiments = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
        for name, setup in EXPERIMENTS.items():
            e = experiments.add_parser(name, formatter_class=fmt, help=setup.title,
                                       description=f"{setup.title}: "
                                                   f"{' against '.join(v.label for v in setup.variants)}. "
                                                   f"The paper: {setup.paper}.")
            add_options(e, ExperimentConfig, {"epochs": setup.epochs, "out": str(out_folder(None, name))})
        for name, study in STUDIES.items():
            e = experiments.add_parser(name, formatter_class=fmt, help=study.title,
                                       description=f"{study.title}: "
                                                   f"{' against '.join(v.label for v in study.variants)} "
                                                   f"(AlexNet). The paper: {study.paper}.")
            add_options(e, StudyConfig, {"out": str(out_folder(None, name))})
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the subcommand. Bad input (InputError, or a file the system refuses to
    write) ends in one line on stderr and exit status 2; a failing environment (Failure, a full disk) in one line
    and exit status 1; anything else is a bug and keeps its traceback."""
    from .divergence import DivergedError
    from .errors import Failure, InputError

    argv = sys.argv[1:] if argv is None else argv
    args = _parser(next((word for word in argv if not word.startswith("-")), "")).parse_args(argv)  # the command
    command = " ".join(filter(None, (args.command, getattr(args, "experiment", None))))  # as argparse names it
    try:
        args.run(args)
        sys.stdout.flush()  # here, where a reader that went away is caught, not at the interpreter's exit
    except BrokenPipeError:  # the reader of the output went away (`alexnet predict ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exiting flushes nowhere
        sys.exit(1)
    except (InputError, Failure, OSError) as err:
        if (isinstance(err, OSError) and err.errno not in REFUSED | EXHAUSTED) or args.traceback \
                or os.environ.get(TRACEBACK):
            raise
        said = (err if not isinstance(err, OSError) else
                f"{err.filename}: {err.strerror}" if err.filename else err.strerror)
        failed = isinstance(err, Failure) or isinstance(err, OSError) and err.errno in EXHAUSTED
        print(f"alexnet {command}: {'failed' if failed else 'error'}: {said}", file=sys.stderr)
        sys.exit(1 if failed else 2)
    except KeyboardInterrupt:
        print(f"alexnet {command}: interrupted", file=sys.stderr)
        sys.exit(130)
    except DivergedError as err:
        print(f"alexnet {command}: stopped: {err}", file=sys.stderr)
        sys.exit(1)
