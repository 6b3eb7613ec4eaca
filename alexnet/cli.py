"""The `alexnet` command: argument parsing only; each subcommand calls one function of the library."""

import argparse
import errno
import os
import sys

from .model import ARCHS

TRACEBACK = "ALEXNET_TRACEBACK"  # set to show the traceback of a bad-input error
# what the system says of a path the user gave that it cannot write: not a bug, one line
REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
           errno.EEXIST}


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
            label_file=args.labels)


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
    from .train import train

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

    from .evaluate import evaluate_checkpoints
    from .runtime import tune_process

    tune_process(args.device)
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

    from .evaluate import predict, top5_records

    predictions = predict(args.checkpoint, args.images, args.crops, args.device, args.precision)
    if args.plot:
        from .figures import plot_predictions

        plot_predictions(predictions, args.plot, args.plot_columns)
    results = predictions.top5()
    if args.json:
        print(json.dumps([{"image": image, "top5": top5_records(top)} for image, top in results]))
        return
    for image, top in results:
        print(image)
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
        print(record["query"] + (f" ({record['class']})" if record["class"] else ""))
        for n in record["neighbors"]:
            print(f"  {n['rank']}. {n['distance']:10.4f}  {n['class']:<20}  {n['file']}")
    if args.out:
        print(f"wrote {args.out}")


def _serve(args: argparse.Namespace) -> None:
    from .runtime import tune_process
    from .serve import serve

    tune_process(args.device)
    serve(args.checkpoint, args.features, args.host, args.port, args.device, args.precision, args.max_batch,
          args.max_wait / 1000, args.queue, int(args.max_mb * 2**20))


def _export(args: argparse.Namespace) -> None:
    from .export import check, export

    meta = export(args.checkpoint, args.out, args.format)
    print(f"wrote {args.out}: {meta['arch']!r}, {len(meta['classes'])} classes, {meta['num_params']:,} parameters, "
          f"{meta['multiply_adds']:,} multiply-adds an image")
    if args.check:
        print(check(args.checkpoint, args.out).line())


def _import_torchvision(args: argparse.Namespace) -> None:
    from .export import import_torchvision

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


def png(name: str) -> str:
    """A picture's file name, which must say what it holds: .png."""
    if not name.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"expected a file name ending in .png (pictures are PNG), got {name}")
    return name


def _parser() -> argparse.ArgumentParser:
    from .lrn import MODES
    from .options import COUNT, SIZE, Parser, checked

    count, size = checked(int, COUNT), checked(int, SIZE)  # a whole number of at least 1, of at least 0
    fmt = _Help
    parser = Parser(prog="alexnet", formatter_class=fmt,
                    description="AlexNet (Krizhevsky, Sutskever, Hinton 2012) as the paper specifies it.")
    parser.add_argument("--traceback", action="store_true",
                        help=f"show the traceback of a bad-input error too (or set {TRACEBACK}=1)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("summary", formatter_class=fmt, help="print the layer table",
                            description="Each layer's output shape, parameters and multiply-adds, with totals.")
    p.add_argument("--arch", choices=ARCHS, default="paper", help="network variant")
    p.add_argument("--classes", type=count, default=1000, help="number of classes")
    p.add_argument("--image-size", type=int, default=227, help="input height and width")
    p.add_argument("--lrn", choices=MODES, default=None, help="LRN formula (default: the architecture's own)")
    p.set_defaults(run=_summary)

    p = commands.add_parser("prepare", formatter_class=fmt, help="preprocess an image folder into a fast store",
                            description="Rescale every image's shorter side to 256 and keep the central 256×256 "
                                        "(§2), into uint8 shards; compute the training set's mean image and RGB "
                                        "PCA. An interrupted run finishes when started again.")
    p.add_argument("src", help="image folder: ROOT/train/<class>/*, ROOT/val/..., or ROOT/<class>/*")
    p.add_argument("dst", help="store folder to write")
    p.add_argument("--shard-size", type=count, default=4096, help="images per shard file")
    p.add_argument("--workers", type=count, default=None, help="decoding processes (default: one per core)")
    p.add_argument("--labels", default=None, help="label file of a flat validation folder (default: found in SRC)")
    p.add_argument("--size", type=count, default=256, help="side of the stored square images")
    p.set_defaults(run=_prepare)

    from .download import ARCHIVES, BASE_URL_VARIABLE

    p = commands.add_parser("download", formatter_class=fmt, help="download Imagenette, Imagewoof or CIFAR-10, "
                                                                  "verified",
                            description="Download a data set from its publisher into DST (an interrupted download "
                                        "continues), check its published size and checksum (SHA-256, or MD5 where "
                                        "only that is published), and unpack it: Imagenette and Imagewoof into "
                                        "DST/NAME/{train,val}/<wnid>/*.JPEG, CIFAR-10 into "
                                        f"DST/{{train,test}}/<class>/*.png. {BASE_URL_VARIABLE}=URL takes the same "
                                        "file names from a mirror.")
    p.add_argument("name", choices=ARCHIVES, metavar="NAME",
                   help=", ".join(f"{name} ({a.size / 1e6:,.0f} MB)" for name, a in ARCHIVES.items()))
    p.add_argument("dst", metavar="DST", help="folder to download and unpack into")
    p.add_argument("--prepare", metavar="STORE", default=None,
                   help="then `alexnet prepare` the unpacked Imagenette into the store STORE (default: no store)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(run=_download)

    from .config import TrainConfig
    from .options import add_options, resume_rules
    from .runtime import PRECISIONS

    p = commands.add_parser("train", formatter_class=fmt, help="train with the paper's recipe (the main job)",
                            description="Train AlexNet with the paper's recipe (§5): SGD with momentum 0.9 and "
                                        "weight decay 5e-4, batch 128, learning rate 0.01 divided by 10 when the "
                                        "validation error stops improving. With no --data, on the built-in photos. "
                                        "On several processes: torchrun --nproc_per_node N -m alexnet train ..., "
                                        "with --parallel towers the paper's two towers on each pair (§3.2).",
                            epilog=resume_rules(TrainConfig))
    add_options(p, TrainConfig)
    p.set_defaults(run=_train)

    p = commands.add_parser("eval", formatter_class=fmt, help="top-1/top-5 error of checkpoints",
                            description="Top-1 and top-5 error on a split, with the centre crop or the ten "
                                        "patches of §4.1; several checkpoints average their softmax outputs.")
    p.add_argument("checkpoints", nargs="+", help="checkpoint files or run folders")
    p.add_argument("--data", default=None, help="a store or an image folder (default: the built-in photos)")
    p.add_argument("--split", default="val", help="split to evaluate")
    p.add_argument("--crops", type=int, choices=(1, 10), default=1, help="1: centre crop; 10: ten patches")
    p.add_argument("--batch-size", type=count, default=128, help="images per batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="arithmetic precision")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=_eval)

    p = commands.add_parser("predict", formatter_class=fmt, help="top-5 classes of images",
                            description="The five most probable classes of each image, with probabilities.")
    p.add_argument("checkpoint", help="a checkpoint file or run folder")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--crops", type=int, choices=(1, 10), default=10, help="1: centre crop; 10: ten patches")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="arithmetic precision")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--plot", type=png, default=None, metavar="PNG",
                   help="also draw Figure 4 (left): each centre crop with its top-5 bars, the true class (from "
                        "the image's folder or file name) in red")
    p.add_argument("--plot-columns", type=count, default=4, help="images per row of the plot")
    p.set_defaults(run=_predict)

    p = commands.add_parser("filters", formatter_class=fmt, help="draw conv1's kernels (Figure 3)",
                            description="The first layer's kernels as images (§6.1, Figure 3), one block per "
                                        "tower, each kernel min-max scaled on its own.")
    p.add_argument("checkpoint", help="a checkpoint file or run folder")
    p.add_argument("--out", type=png, default="conv1.png", help="PNG file to write")
    p.add_argument("--columns", type=count, default=16, help="kernels per row")
    p.add_argument("--zoom", type=count, default=4, help="pixels per weight, each way")
    p.add_argument("--gap", type=size, default=2, help="pixels between kernels")
    p.set_defaults(run=_filters)

    p = commands.add_parser("features", formatter_class=fmt, help="fc7 features of every image of a split",
                            description="The 4096-d fc7 activations (after ReLU) of the centre crop of every image "
                                        "of a split, with labels and files, into a folder that `alexnet neighbors` "
                                        "searches (§6.1). An interrupted run continues where it stopped.")
    p.add_argument("checkpoint", help="a checkpoint file or run folder")
    p.add_argument("--data", default=None, help="a store or an image folder (default: the built-in photos)")
    p.add_argument("--split", default="train", help="split to describe")
    p.add_argument("--out", required=True, help="features folder to write (features.npy, labels.npy, files.txt)")
    p.add_argument("--batch-size", type=count, default=64, help="images per batch (a resumed run keeps its own)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="arithmetic precision")
    p.add_argument("--workers", type=size, default=2, help="decoding processes when reading JPEG folders")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(run=_features)

    p = commands.add_parser("neighbors", formatter_class=fmt, help="nearest images by fc7 distance (Figure 4)",
                            description="For each query image, the images of a features folder whose fc7 features "
                                        "are nearest in Euclidean distance (§6.1, Figure 4 right): exact search in "
                                        "chunks, so memory stays small however many features there are.")
    p.add_argument("checkpoint", help="the checkpoint the features were made with")
    p.add_argument("queries", nargs="+", help="query image files")
    p.add_argument("--features", required=True, help="a folder made by `alexnet features`")
    p.add_argument("--k", type=count, default=6, help="neighbors per query")
    p.add_argument("--out", type=png, default=None, help="PNG file to draw the grid to (default: no picture)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--chunk", type=count, default=16384, help="stored features per matrix product (16 KiB each)")
    p.add_argument("--device", default="auto", help="device for the queries' features: auto, cpu, cuda, ...")
    p.set_defaults(run=_neighbors)

    from .options import AMOUNT, PORT, RATE
    from .serve import MAX_BYTES

    p = commands.add_parser("serve", formatter_class=fmt, help="Figure 4 as a web page and a JSON API",
                            description="Serve a web page (choose or drop a photo: its top-5 classes as bars and, "
                                        "with --features, its nearest images) and a JSON API: POST /predict, GET "
                                        "/health, /info, /docs. Requests that arrive together run as one batch.")
    p.add_argument("checkpoint", help="a checkpoint file or run folder")
    p.add_argument("--features", default=None, help="a folder made by `alexnet features`: show nearest images too")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=checked(int, PORT), default=8000, help="port to listen on")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="arithmetic precision (auto on a CPU: the faster at batches of --max-batch; with "
                        "--features: the features' own)")
    p.add_argument("--max-batch", type=count, default=16, help="photos per forward pass at most (1: no batching)")
    p.add_argument("--max-wait", type=checked(float, AMOUNT), default=5.0, metavar="MS",
                   help="milliseconds a batch waits for more photos after its first")
    p.add_argument("--queue", type=count, default=64, help="photos waiting at most; beyond, 503 (busy)")
    p.add_argument("--max-mb", type=checked(float, RATE), default=MAX_BYTES / 2**20,
                   help="largest request body in MiB; beyond, 413")
    p.set_defaults(run=_serve)

    from .export import FORMATS

    p = commands.add_parser("export", formatter_class=fmt, help="a checkpoint as safetensors, ONNX or torch.export",
                            description="Write a checkpoint's network with its metadata (architecture, LRN formula, "
                                        "parameters, multiply-adds, classes, preprocessing, the accuracy measured): "
                                        "safetensors (which every command taking a checkpoint takes), ONNX with a "
                                        "dynamic batch dimension, or a torch.export program (.pt2, loadable "
                                        "without this package).")
    p.add_argument("checkpoint", help="a checkpoint file, run folder or weights file")
    p.add_argument("out", help=f"file to write; its suffix names the format ({', '.join(FORMATS)})")
    p.add_argument("--format", choices=tuple(FORMATS.values()), default=None,
                   help="the format (default: by OUT's suffix)")
    p.add_argument("--check", action="store_true",
                   help="then run the file (ONNX: with onnxruntime) and the checkpoint on the built-in validation "
                        "photos, and print the largest logit difference and the top-5 agreement")
    p.set_defaults(run=_export)

    p = commands.add_parser("import-torchvision", formatter_class=fmt, help="torchvision's alexnet weights as a "
                            "checkpoint", description="Make a checkpoint of a torchvision.models.alexnet() state "
                                                      "dict (such as torchvision's alexnet-owt-7be5be79.pth): the "
                                                      "'owt' network with ImageNet's 1000 class names and "
                                                      "torchvision's preprocessing (shorter side 256, centre crop "
                                                      "224, its mean and std), for eval, predict, features, "
                                                      "neighbors and export.")
    p.add_argument("weights", help="a .pth file holding torchvision alexnet()'s state dict")
    p.add_argument("out", help="checkpoint file to write (.pt)")
    p.set_defaults(run=_import_torchvision)

    from .ablations import STUDIES, StudyConfig
    from .experiments import EXPERIMENTS, ExperimentConfig

    p = commands.add_parser("experiment", formatter_class=fmt, help="the paper's claims as experiments, with seeds",
                            description="Train the variants of a network that a claim of the paper is about, from "
                                        "the same initial weights through the same mini-batches, for several seeds; "
                                        "write their curves, a figure and a table. relu-vs-tanh, lrn, pooling: a "
                                        "four-layer CNN on CIFAR-10 (class folders of 32×32 images) on the CPU; "
                                        f"{', '.join(STUDIES)}: AlexNet on a store from `alexnet prepare`.")
    experiments = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, setup in EXPERIMENTS.items():
        e = experiments.add_parser(name, formatter_class=fmt, help=setup.title,
                                   description=f"{setup.title}: {' against '.join(v.label for v in setup.variants)}. "
                                               f"The paper: {setup.paper}.")
        add_options(e, ExperimentConfig, {"epochs": setup.epochs, "out": f"runs/experiments/{name}"})
    for name, study in STUDIES.items():
        e = experiments.add_parser(name, formatter_class=fmt, help=study.title,
                                   description=f"{study.title}: {' against '.join(v.label for v in study.variants)}"
                                               f" (AlexNet). The paper: {study.paper}.")
        add_options(e, StudyConfig, {"out": f"runs/experiments/{name}"})
    p.set_defaults(run=_experiment)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the subcommand. Bad input (InputError, or a file the system refuses to
    write) ends in one line on stderr and exit status 2; anything else is a bug and keeps its traceback."""
    from .divergence import DivergedError
    from .errors import InputError

    args = _parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "experiment", None))))  # as argparse names it
    try:
        args.run(args)
    except (InputError, OSError) as err:
        if (isinstance(err, OSError) and err.errno not in REFUSED) or args.traceback or os.environ.get(TRACEBACK):
            raise
        said = f"{err.filename}: {err.strerror}" if isinstance(err, OSError) and err.filename else err
        print(f"alexnet {command}: error: {said}", file=sys.stderr)
        sys.exit(2)
    except DivergedError as err:
        print(f"alexnet {command}: stopped: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"alexnet {command}: interrupted", file=sys.stderr)
        sys.exit(130)
