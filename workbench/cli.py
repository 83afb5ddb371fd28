"""The `workbench` command: run a recipe, inspect a model, export a reproducing script.

Errors a user can fix (bad file, bad recipe field) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from workbench.errors import WorkbenchError


def _run(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from workbench.pipeline import run_pipeline
    from workbench.report import render_text
    from workbench.specs import load_recipe

    spec = load_recipe(args.recipe)
    if args.threads:
        import dataclasses

        spec = dataclasses.replace(spec, measure=dataclasses.replace(spec.measure, threads=args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "log.txt", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("workbench").addHandler(handler)
    logging.getLogger("workbench").setLevel(logging.INFO)
    bar = tqdm(total=100, desc=spec.name or spec.model.label, unit="%", disable=args.quiet,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")
    log = logging.getLogger("workbench.cli")

    def progress(fraction: float, stage: str, message: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(f"{stage}: {message}", refresh=True)
        log.info("%3.0f%% %s: %s", 100 * fraction, stage, message)

    try:
        report = run_pipeline(spec, progress=progress, out_dir=out)
    finally:
        bar.close()
        logging.getLogger("workbench").removeHandler(handler)
        handler.close()
    print(render_text(report))
    print(f"\nwrote {out / 'model.onnx'}, {out / 'report.json'}, {out / 'recipe.yaml'}, {out / 'log.txt'}")


def _inspect(args: argparse.Namespace) -> None:
    from workbench.models import load_model
    from workbench.specs import MODEL_SUFFIXES, ModelRef
    from workbench.summary import summarize

    is_file = Path(args.model).suffix.lower() in MODEL_SUFFIXES
    ref = ModelRef(path=args.model, arch=args.arch) if is_file else ModelRef(sample=args.model)
    summary = summarize(load_model(ref))
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return
    print(f"{summary.label} ({summary.kind}), inputs: {', '.join(summary.inputs)}")
    print(f"{'layer':32} {'op':10} {'weight shape':16} {'params':>9} {'share':>7} {'MACs':>11} {'zeros':>6}")
    for r in summary.layers:
        macs = f"{r.macs:,}" if r.macs is not None else "?"
        shape = "x".join(map(str, r.weight_shape))
        print(f"{r.name[:32]:32} {r.op_type[:10]:10} {shape:16} {r.params:>9,} {r.share:>7.1%} {macs:>11} "
              f"{r.sparsity:>6.1%}")
    macs = f"{summary.total_macs:,}" if summary.total_macs is not None else "unknown"
    size = f"{summary.file_bytes:,} bytes" if summary.file_bytes is not None else "unknown"
    print(f"total parameters {summary.total_params:,} (weights {summary.weight_params:,}); MACs/sample {macs}; "
          f"file {size}")


def _export_script(args: argparse.Namespace) -> None:
    from workbench.codegen import python_script
    from workbench.specs import load_recipe

    spec = load_recipe(args.recipe)
    target = Path(args.output) if args.output else None
    source = python_script(spec, target.name if target else "reproduce.py")
    if target is None:
        print(source)
    else:
        target.write_text(source)
        print(f"wrote {target}")


def _check(args: argparse.Namespace) -> None:
    from workbench.specs import dump_recipe, load_recipe

    print(dump_recipe(load_recipe(args.recipe)), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Compress a model and measure what it buys.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a recipe and write model.onnx, report.json and a log")
    run.add_argument("recipe")
    run.add_argument("--out", required=True, help="output folder")
    run.add_argument("--threads", type=int, help="override measure.threads")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_run)
    inspect = sub.add_parser("inspect", help="print a model's per-layer summary")
    inspect.add_argument("model", help="sample name or model file (.onnx .pt2 .pt .ts .safetensors)")
    inspect.add_argument("--arch", help="built-in architecture for a .safetensors file")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=_inspect)
    script = sub.add_parser("export-script", help="write a Python script that reproduces a recipe")
    script.add_argument("recipe")
    script.add_argument("-o", "--output", help="script path (default: print)")
    script.set_defaults(func=_export_script)
    check = sub.add_parser("check", help="validate a recipe and print it with all defaults filled in")
    check.add_argument("recipe")
    check.set_defaults(func=_check)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
