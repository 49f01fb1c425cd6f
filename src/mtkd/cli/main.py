"""`mtkd`: datasets, models, teacher fit, train, study, evaluate, predict, export, summary.

Every config option is a flag (`--optim.lr 0.05`), and `--set optim.lr=0.05` does the same;
a few common ones have short aliases (`--dataset`, `--model`, `--epochs`, ...). Problems with
the input print one line and exit with status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtkd.errors import MtkdError


def _aliases(command: str) -> dict[str, str]:
    """--flag -> dotted key, from the short names the CLI and the Python API share."""
    from mtkd.engine.config import SHORT_KEYS

    return {"--" + k.replace("_", "-"): v for k, v in SHORT_KEYS[command].items()}


out = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True)


def _add_config_flags(parser: argparse.ArgumentParser, model: type, aliases: dict[str, str]) -> None:
    from mtkd.engine.config import leaf_fields

    parser.add_argument("--config", "-c", help="YAML config file")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the interrupted run in the output folder"
    )
    parser.add_argument(
        "--nproc", type=int, default=1, metavar="N",
        help="train with N processes on this machine (DistributedDataParallel through torchrun)",
    )  # fmt: skip
    group = parser.add_argument_group("config options (also settable in YAML)")
    for key, info in leaf_fields(model).items():
        names = [f"--{key}"] + [a for a, target in aliases.items() if target == key]
        default = info.default if info.default_factory is None else info.default_factory()
        group.add_argument(
            *names, dest=f"cfg:{key}", default=argparse.SUPPRESS, metavar="V",
            help=f"{info.description or ''} (default: {default})".strip(),
        )  # fmt: skip


def _config_from_args(model: type, args: argparse.Namespace):  # noqa: ANN202
    from mtkd.engine.config import build_config, parse_value

    overrides = {k[4:]: parse_value(v) for k, v in vars(args).items() if k.startswith("cfg:")}
    # Paths and names stay strings even when they look like numbers.
    for key in (
        "data.name",
        "model.name",
        "teacher.name",
        "output.dir",
        "data.data_dir",
        "teacher.pretrained",
    ):
        if key in overrides and overrides[key] is not None:
            overrides[key] = str(vars(args)[f"cfg:{key}"])
    return build_config(model, args.config, overrides, args.set)


def cmd_datasets(args: argparse.Namespace) -> None:
    from mtkd.data import describe_datasets

    table = Table(title="datasets (also: folder:PATH with train/ and val/ or test/ class folders)")
    for col in ("name", "classes", "sizes", "available", "where", "summary"):
        table.add_column(col)
    for row in describe_datasets(Path(args.data_dir) if args.data_dir else None):
        table.add_row(
            row["name"],
            str(row["classes"]),
            row["sizes"],
            "yes" if row["available"] else "no",
            row["where"],
            row["summary"],
        )
    out.print(table)


def cmd_models(args: argparse.Namespace) -> None:
    from mtkd.models.catalog import describe_students
    from mtkd.teachers.catalog import describe_teachers

    teachers = Table(title="teachers: ImageNet-pretrained (any timm or torchvision classifier by name)")
    for col in ("name", "library", "params", "input", "weights", "offline"):
        teachers.add_column(col)
    for row in describe_teachers():
        teachers.add_row(
            row["name"], row["library"], row["params"], row["input"], row["weights"], row["offline"]
        )
    out.print(teachers)
    students = Table(title="students: trained from scratch (also any timm model by name)")
    for col in ("name", "params (10 classes, grey)", "description"):
        students.add_column(col)
    for row in describe_students():
        students.add_row(row["name"], f"{row['params']:,}", row["description"])
    out.print(students)
    out.print(
        "pretrained students (model.pretrained: offline, as installed here): "
        + ", ".join(
            f"timm:{r['name']}"
            for r in describe_teachers()
            if r["library"] == "timm" and r["offline"] == "yes"
        )
        + "; any timm model with pretrained: hub when online, hf-hub:ORG/NAME, or a weights file",
        highlight=False,
        soft_wrap=True,
    )


def cmd_methods(args: argparse.Namespace) -> None:
    """Every method (mtkd's and plugins'), or one with its options and the YAML that sets it."""
    import mtkd.methods  # noqa: F401 - registers mtkd's methods
    from mtkd.methods.catalog import describe_method, describe_methods, yaml_block

    if args.name is None:
        table = Table(title="transfer methods (transfer.methods); `mtkd methods NAME` for one")
        for col in ("name", "paper", "reads of the teachers", "teachers", "trains", "options", "from"):
            table.add_column(col)
        for d in describe_methods():
            options = ", ".join(o["option"] for o in d["options"])
            table.add_row(d["name"], d["paper"], d["reads"], d["teachers"], d["trains"], options, d["origin"])
        out.print(table)
        return
    d = describe_method(args.name)
    out.print(f"[bold]{d['name']}[/bold]: {escape(d['paper'])} ({escape(d['origin'])})")
    needs = (
        "teachers adapted to the dataset (mtkd teacher fit)"
        if d["adapted teachers"] == "yes"
        else "any teachers"
    )
    out.print(f"reads {d['reads']}; teachers: {d['teachers']}, {needs}; trains: {escape(d['trains'])}")
    table = Table()
    for col in ("option", "type", "default", "description"):
        table.add_column(col)
    for o in d["options"]:
        table.add_row(o["option"], o["type"], o["default"], o["description"])
    out.print(table)
    out.print(escape(yaml_block(args.name)), end="", soft_wrap=True)


def _launched(args: argparse.Namespace, cfg: object) -> bool:
    """`--nproc N`: run this same command under torchrun with N processes; True when it did."""
    if args.nproc == 1:
        return False
    from mtkd.engine.launch import launch_local

    launch_local(args.nproc, _without_nproc(args.argv), cfg)
    return True


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def cmd_train(args: argparse.Namespace) -> None:
    from mtkd.engine.config import TrainConfig
    from mtkd.engine.run import run_train

    cfg = _config_from_args(TrainConfig, args)
    if not _launched(args, cfg):
        run_train(cfg, resume=args.resume)


def cmd_teacher_fit(args: argparse.Namespace) -> None:
    from mtkd.engine.config import TeacherFitConfig
    from mtkd.engine.run import run_teacher_fit

    cfg = _config_from_args(TeacherFitConfig, args)
    if not _launched(args, cfg):
        run_teacher_fit(cfg, resume=args.resume)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mtkd.engine.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(args.checkpoint, args.split, args.device, data=args.data)
    out.print(f"{report['checkpoint']} on {args.split} ({report['count']} images): "
              f"top-1 {report['top1']:.4f}  top-5 {report['top5']:.4f}")  # fmt: skip
    classes = list(report["per_class"])
    table = Table(title="per-class accuracy and confusion matrix (rows: true, columns: predicted)")
    table.add_column("class")
    table.add_column("acc")
    for i in range(len(classes)):
        table.add_column(str(i), justify="right")
    for i, name in enumerate(classes):
        table.add_row(
            f"{i} {name}", f"{report['per_class'][name]:.3f}", *[str(v) for v in report["confusion"][i]]
        )
    out.print(table)


def cmd_predict(args: argparse.Namespace) -> None:
    from mtkd.deploy.predict import predict_files, write_predictions

    rows = predict_files(args.model, args.images, args.device, args.top_k, args.batch_size)
    write_predictions(rows, args.out)
    if args.out not in (None, "-"):
        err.print(f"wrote {len(rows)} predictions to {args.out}", highlight=False)


def cmd_export(args: argparse.Namespace) -> None:
    from mtkd.deploy import hf, hub, onnx

    if args.push is not None:
        if args.format != "hf":
            raise MtkdError("--push uploads an exported folder: use it with --format hf")
        hub.check_repo(args.push)
    if args.format == "hf":
        info = hf.export_folder(args.checkpoint, args.out)
        out.print(f"wrote {info['path']}: config.json, model.safetensors, README.md ({info['library']} "
                  f"{info['architecture']}; load it with "
                  + ("timm.create_model(\"local-dir:...\", pretrained=True) or " if info["library"] == "timm" else "")
                  + "mtkd.load_student(\"local-dir:...\"))", highlight=False)  # fmt: skip
        if args.push:
            out.print(f"pushed to {hub.push_folder(args.out, args.push)}", highlight=False)
        return
    if args.format == "onnx":
        info = onnx.export_onnx(args.checkpoint, args.out, args.opset)
    else:
        info = onnx.export_int8(args.checkpoint, args.out, args.opset, args.calibration, args.calibrate)
    out.print(f"wrote {info['path']} (input float [N,{info['input'][1]},{info['input'][2]},{info['input'][3]}] "
              f"in [0,1]); onnxruntime vs PyTorch max abs diff {info['max_abs_diff']:.2e}", highlight=False)  # fmt: skip
    if args.format == "onnx-int8":
        out.print(onnx.int8_table(info))
        for line in onnx.int8_verdict(info):
            out.print(line, highlight=False, soft_wrap=True)


def cmd_study(args: argparse.Namespace) -> None:
    from mtkd.study.config import load_study_config
    from mtkd.study.runner import run_study

    if args.ray is not None and (args.plan or args.report_only):
        raise MtkdError("--ray runs the study's jobs: it does not go with --plan or --report-only")
    if args.ray is not None and args.jobs != 1:
        raise MtkdError(
            "--jobs does not go with --ray: Ray runs as many runs at once as the cluster's CPUs and GPUs take"
        )
    cfg = load_study_config(args.config, args.set, args.out)
    if args.plan:
        from mtkd.study.runner import write_plan

        for line in write_plan(cfg, args.config, args.nproc_per_run):
            out.print(line, highlight=False, soft_wrap=True)
        return
    run_study(cfg, workers=args.jobs, report=True, run=not args.report_only, nproc=args.nproc_per_run,
              ray=args.ray)  # fmt: skip


def cmd_summary(args: argparse.Namespace) -> None:
    from mtkd.engine.checkpoint import read_summary

    table = Table(title=f"runs under {args.folder}")
    for col in (
        "run",
        "kind",
        "model",
        "dataset",
        "params",
        "MACs",
        "best epoch",
        "val acc",
        "test acc",
        "test acc (last)",
    ):
        table.add_column(col)
    found = sorted(Path(args.folder).rglob("summary.json"))
    if not found:
        raise MtkdError(f"no finished runs (summary.json) under {args.folder}")
    for path in found:
        s = read_summary(path)
        table.add_row(
            str(path.parent.relative_to(args.folder)), s["kind"], s["name"], s["dataset"], f"{s['params']:,}", f"{s['macs']:,}",
            str(s["best_epoch"]), f"{s['val_acc']:.4f}", f"{s['test_acc']:.4f}", f"{s['test_acc_last']:.4f}",
        )  # fmt: skip
    out.print(table)


def _methods_epilog() -> str:
    from mtkd.methods import METHODS

    return f"methods (--methods): {', '.join(METHODS.names())}; `mtkd methods NAME` shows one's options"


def build_parser() -> argparse.ArgumentParser:
    from mtkd import __version__
    from mtkd.engine.config import TeacherFitConfig, TrainConfig

    parser = argparse.ArgumentParser(
        prog="mtkd", description="Multi-teacher knowledge transfer for small image classifiers."
    )
    parser.add_argument("--version", action="version", version=f"mtkd {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list the datasets and whether they are available here")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("models", help="list teachers and students")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("methods", help="list the transfer methods, or show one with its options and YAML")
    p.add_argument("name", nargs="?", help="a method's name")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("train", help="train a student", epilog=_methods_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    _add_config_flags(p, TrainConfig, _aliases("train"))
    p.set_defaults(func=cmd_train)

    teacher = sub.add_parser("teacher", help="adapt pretrained teachers to a dataset")
    tsub = teacher.add_subparsers(dest="teacher_command", required=True)
    p = tsub.add_parser("fit", help="adapt a teacher: new head on a frozen backbone (probe) or fine-tuning")
    _add_config_flags(p, TeacherFitConfig, _aliases("teacher fit"))
    p.set_defaults(func=cmd_teacher_fit)

    p = sub.add_parser(
        "evaluate", help="top-1/top-5, per-class accuracy and confusion matrix of a checkpoint"
    )
    p.add_argument("checkpoint", help="run folder, or a .json/.safetensors checkpoint")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--data",
        metavar="NAME",
        help="evaluate on this dataset (name, plugin or folder:PATH) instead of the run's",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "predict",
        help="classify image files and folders with a run, an exported folder or an ONNX file, to CSV",
    )
    p.add_argument("model", help="run folder or checkpoint, exported folder (local-dir:DIR), or .onnx file")
    p.add_argument("images", nargs="+", help="image files, and folders searched recursively")
    p.add_argument("--out", help="the CSV file to write (default: stdout)")
    p.add_argument("--top-k", type=int, default=5, help="classes in the top5 column (default 5)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "export", help="ship a run: ONNX, int8 ONNX with its measured cost, or a timm / Hugging Face folder"
    )
    p.add_argument("checkpoint", help="a finished run folder or checkpoint")
    p.add_argument("--format", default="onnx", choices=["onnx", "onnx-int8", "hf"],
                   help="onnx; onnx-int8 (also writes NAME.int8.onnx beside it); hf (a folder)")  # fmt: skip
    p.add_argument(
        "--out", required=True, help="the .onnx file (onnx, onnx-int8) or the folder (hf) to write"
    )
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--calibration", type=int, default=512, metavar="N",
                   help="onnx-int8: training images to calibrate on (default 512)")  # fmt: skip
    p.add_argument("--calibrate", metavar="NAME",
                   help="onnx-int8: calibrate on this dataset's training images instead of the run's")  # fmt: skip
    p.add_argument("--push", nargs="?", const="", metavar="ORG/NAME",
                   help="hf: upload the folder to this Hugging Face Hub repository")  # fmt: skip
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "study",
        help="run a study (teachers x methods x seeds) and write its report answering the three questions",
    )
    p.add_argument("config", help="study YAML (see configs/demo/study.yaml)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process (default 1)")
    p.add_argument("--out", help="study folder (default: the config's output)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a study key")
    p.add_argument(
        "--report-only", action="store_true", help="write the report from the finished runs, run nothing"
    )
    p.add_argument(
        "--nproc-per-run", type=int, default=1, metavar="K",
        help="train each run with K processes (torchrun); with --jobs N, N*K processes at once",
    )  # fmt: skip
    p.add_argument(
        "--ray", nargs="?", const="", default=None, metavar="ADDRESS",
        help="run each job as a Ray task: on the cluster at ADDRESS (auto, ray://host:10001), or on a local "
        "Ray instance without one (pip install 'mtkd[ray]')",
    )  # fmt: skip
    p.add_argument(
        "--plan", action="store_true",
        help="write each unfinished run's config and print one command per run, in stages (for a cluster)",
    )  # fmt: skip
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("summary", help="table of the finished runs under a folder")
    p.add_argument("folder")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        args.func(args)
    except MtkdError as exc:
        if debug:
            raise
        print(f"mtkd: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("mtkd: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if "torch.distributed" in sys.modules:
            from mtkd.dist import cleanup

            cleanup()


if __name__ == "__main__":
    main()
