"""The `workbench` command: run a recipe, inspect a model, export a reproducing script, per-layer
sensitivity with a sparsity or bits allocation, and queue runs for a background worker (submit, sweep, search,
runs, show, cancel, retry, delete, sweep-summary, search-summary, worker).

Errors a user can fix (bad file, bad recipe field, unknown run id) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.errors import WorkbenchError
from workbench.report import text_table

if TYPE_CHECKING:
    from workbench.store import Store
    from workbench.worker import Executor


def _run(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from workbench.pipeline import run_pipeline
    from workbench.report import render_text
    from workbench.specs import load_recipe

    spec = load_recipe(args.recipe)
    given = {"threads": args.threads, "batch_sizes": tuple(sorted(set(args.batch_sizes or ())))}
    if overrides := {key: value for key, value in given.items() if value}:
        import dataclasses

        spec = dataclasses.replace(spec, measure=dataclasses.replace(spec.measure, **overrides))
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
    print("\nwrote " + ", ".join(str(out / name) for name in (*report.artifacts.values(), "log.txt")))


def _unpack(args: argparse.Namespace) -> None:
    from workbench.packed_model import restore

    graph, packed = Path(args.graph), Path(args.packed)
    for path in (graph, packed):
        if not path.is_file():
            raise WorkbenchError(f"{path}: file not found")
    model = restore(graph.read_bytes(), packed.read_bytes())
    data = model.SerializeToString()
    Path(args.output).write_bytes(data)
    print(f"wrote {args.output} ({len(data):,} bytes) from {graph.stat().st_size:,} + {packed.stat().st_size:,} bytes")


def _inspect(args: argparse.Namespace) -> None:
    from workbench.models import load_model
    from workbench.specs import MODEL_SUFFIXES, ModelRef
    from workbench.summary import summarize

    is_file = Path(args.model).suffix.lower() in MODEL_SUFFIXES
    ref = ModelRef(path=args.model, arch=args.arch) if is_file else ModelRef(sample=args.model)
    loaded = load_model(ref)
    summary = summarize(loaded)
    conversion = _conversion_line(loaded.onnx_model) if loaded.kind == "onnx" else None
    if args.json:
        print(json.dumps(summary.to_dict() | ({"torch_conversion": conversion} if conversion else {}), indent=2))
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
    if conversion:
        print(f"torch conversion (for training and removing channels): {conversion}")


def _conversion_line(model) -> str:
    """Whether an ONNX graph converts to torch modules (workbench.onnx_torch), checked on random inputs of its
    declared shapes: the methods that train or remove channels run on that conversion."""
    from workbench.evaluate import make_session
    from workbench.onnx_torch import convert, random_check_inputs

    session = make_session(model)
    inputs = random_check_inputs(session)
    if inputs is None:
        return "not checked here (an input is not float or has unnamed sizes); a run checks it on its data"
    try:
        return f"converts ({convert(model, inputs, session).fidelity()} on {len(inputs[0])} random inputs)"
    except WorkbenchError as exc:
        return f"does not convert: {exc}"


def _base_spec(text: str, arch: str | None = None, data: str | None = None, label_column: str | None = None):
    """A recipe file, a model file or a sample name as a `RunSpec` (a recipe keeps its own data)."""
    from workbench.specs import MODEL_SUFFIXES, DataRef, ModelRef, RunSpec, load_recipe
    from workbench.zoo import sample_names

    suffix = Path(text).suffix.lower()
    if suffix in (".yaml", ".yml", ".json"):
        return load_recipe(text)
    if suffix in MODEL_SUFFIXES:
        model = ModelRef(path=text, arch=arch)
    elif text in sample_names():
        model = ModelRef(sample=text)
    else:
        raise WorkbenchError(f"'{text}': not a recipe (.yaml), a model file ({', '.join(MODEL_SUFFIXES)}) or a "
                             f"sample ({', '.join(sample_names())})")
    ref = DataRef() if data in (None, "digits") else DataRef(path=data, label_column=label_column)
    return RunSpec(model=model, data=ref)


def _levels_table(sens, kind: str) -> str:
    frame = sens.frame(kind)
    head = (lambda v: f"{v:.0%}") if kind == "sparsity" else (lambda v: f"{v}-bit")
    rows = []
    for layer, cells in frame.groupby("layer", sort=False):
        row = {"layer": layer, "params": f"{int(cells['params'].iloc[0]):,}"}
        row.update({head(level): f"{drop:.1f}" for level, drop in zip(cells["level"], cells["drop"], strict=True)})
        rows.append(row)
    return text_table(rows)


def _sensitivity(args: argparse.Namespace) -> None:
    import yaml

    from workbench.models import load_model
    from workbench.pipeline import load_splits
    from workbench.sensitivity import allocate, allocate_size, analyze
    from workbench.specs import quant_spec_for_bits, stage_dict

    spec = _base_spec(args.model, args.arch, args.data, args.label_column)
    loaded = load_model(spec.model)
    test = load_splits(spec, loaded).test
    sens = analyze(loaded, test)
    if args.bits_kb is not None:
        _bits_allocation(args, sens, loaded, test)
        return
    if args.size_kb is not None:
        allocation = allocate_size(sens, args.size_kb * 1024, args.bits, args.exclude)
    else:
        allocation = allocate(sens, args.target, args.exclude)
    prune = {k: v for k, v in stage_dict(allocation.prune_spec())["prune"].items()
             if k in ("sparsity", "overrides", "exclude") and v != []}
    stages = [{"prune": prune}]
    quant = quant_spec_for_bits(args.bits) if args.size_kb is not None else None
    if quant is not None:
        stages.append({"quantize": {"method": quant.method, "weight_bits": quant.weight_bits}})
    if args.json:
        print(json.dumps({"sensitivity": sens.to_dict(), "allocation": allocation.to_dict(), "stages": stages},
                         indent=2))
        return
    _print_tables(sens, test)
    what = f"{args.size_kb:g} KB at {args.bits} bits" if args.size_kb is not None else f"{args.target:.0%} overall"
    print(f"\nallocation for {what} (least KL per pruned weight first; layers were measured alone, so run the "
          f"recipe to measure them together):")
    if allocation.note:
        print(f"note: {allocation.note}")
    print(yaml.safe_dump(stages, sort_keys=False), end="")


def _print_tables(sens, test) -> None:
    print(f"{sens.label}: {sens.metric} {sens.baseline:.4f} on {len(test)} {test.name} samples; each layer changed "
          f"alone, the others untouched ({sens.seconds:.1f} s)")
    print(f"\n{sens.metric} drop (pt) when one layer is magnitude-pruned to:\n{_levels_table(sens, 'sparsity')}")
    print(f"\n{sens.metric} drop (pt) when one layer's weights are rounded (symmetric, per channel) to:\n"
          f"{_levels_table(sens, 'bits')}")


def _bits_allocation(args: argparse.Namespace, sens, loaded, test) -> None:
    """Per-layer bits for --bits-kb, printed as a quantize stage to paste into a recipe."""
    import yaml

    from workbench.pruning import onnx_weights, torch_weights
    from workbench.sensitivity import BITS, allocate_bits, matmul_only
    from workbench.specs import stage_dict

    allocation = allocate_bits(sens, args.bits_kb * 1024, args.bits_choices or BITS, args.exclude)
    weights = torch_weights(loaded.module) if loaded.module is not None else onnx_weights(loaded.onnx_model)
    quant = allocation.quant_spec(matmul_only(weights))
    body = {k: v for k, v in stage_dict(quant)["quantize"].items()
            if k in ("method", "weight_bits", "per_channel", "overrides", "exclude") and v not in ([], False)}
    stages = [{"quantize": body}]
    if args.json:
        print(json.dumps({"sensitivity": sens.to_dict(), "bits_allocation": allocation.to_dict(), "stages": stages},
                         indent=2))
        return
    _print_tables(sens, test)
    how = ("weight_only: MatMulNBits stores each layer at its bits (real)" if quant.method == "weight_only" else
           "fake: values rounded per layer but stored as float32 (simulated accuracy, storage computed)")
    print(f"\nbits allocation for {args.bits_kb:g} KB of weights (least KL per byte saved first; layers were "
          f"measured alone, so run the recipe to measure them together):")
    print(f"note: {allocation.note}; predicted from the table: KL {allocation.kl:.4f}, drop {allocation.drop:.2f} pt "
          f"(sums over layers)\nmethod: {how}")
    print(yaml.safe_dump(stages, sort_keys=False), end="")


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


# --- background runs ----------------------------------------------------------------------------

def _store(args: argparse.Namespace) -> Store:
    from workbench.settings import get_settings
    from workbench.store import Store

    return Store((Path(args.home).expanduser() if args.home else get_settings().home).absolute())


def _run_id(text: str) -> int:
    if not text.strip().isdigit():
        raise WorkbenchError(f"run id must be a whole number, got '{text}'")
    return int(text)


def _submit(args: argparse.Namespace) -> None:
    from workbench.jobs import submit
    from workbench.specs import load_recipe

    store = _store(args)
    run = submit(store, load_recipe(args.recipe), name=args.name)
    print(run.id)
    _maybe_start_worker(args, store)


def _sweep(args: argparse.Namespace) -> None:
    from workbench.jobs import parse_grid, submit_sweep
    from workbench.specs import load_recipe

    store = _store(args)
    sweep_id, runs = submit_sweep(store, load_recipe(args.recipe), parse_grid(args.grid))
    print(f"sweep {sweep_id}")
    for run in runs:
        print(f"{run.id}  {run.name}")
    _maybe_start_worker(args, store)


def _values(text: str | None, cast: type, name: str) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(cast(v) for v in text.split(","))
    except ValueError:
        raise WorkbenchError(f"--{name}: expected comma-separated numbers, got '{text}'") from None


def _search(args: argparse.Namespace) -> None:
    import time

    from workbench.search import SPACE, search

    space = dict(SPACE)
    for axis, cast in (("sparsity", float), ("bits", int), ("ratio", float)):
        values = _values(getattr(args, axis), cast, axis)
        if values is not None:
            space[axis] = values
    store = _store(args)
    sweep_id, runs = search(store, _base_spec(args.recipe), args.max_drop, args.trials, args.minutes, space,
                            args.objective)
    planned = store.get_sweep(sweep_id).settings["planned"]
    deadline = f", queued candidates cancelled after {args.minutes:g} min" if args.minutes else ""
    print(f"search {sweep_id}: {len(runs)} of {planned} candidates queued, coarse-to-fine{deadline}")
    for run in runs:
        print(f"{run.id}  {run.name}")
    if not args.wait:
        _maybe_start_worker(args, store)
        return
    args.start_worker = True
    _maybe_start_worker(args, store)
    shown = None
    while True:
        store.expire_sweeps()
        states = [r.status for r in store.list(sweep_id=sweep_id, limit=10_000)]
        done = sum(status not in ("queued", "running") for status in states)
        if done != shown:
            print(f"{done}/{len(states)} candidates finished", file=sys.stderr, flush=True)
            shown = done
        if done == len(states):
            break
        time.sleep(1.0)
    _print_search(store, sweep_id, None, None)


def _print_search(store: Store, sweep_id: str, max_drop: float | None, objective: str | None) -> None:
    from workbench.search import search_summary

    summary = search_summary(store, sweep_id, max_drop, objective)
    keys = ["id", "label", "status", "ratio", summary.metric, "drop", "gzip_kb", "latency_ms", "meets_bar", "pareto"]
    rows = [{k: _cell(v) for k, v in row.items() if k in keys} for row in summary.frame.to_dict(orient="records")]
    print(f"\nsearch {sweep_id}: bar {summary.max_drop:g} pt drop, objective {summary.objective}")
    print(text_table(rows, keys))
    print(f"\n{summary.message}")


def _search_summary(args: argparse.Namespace) -> None:
    from workbench.search import search_summary

    if args.json:
        print(json.dumps(search_summary(_store(args), args.id, args.max_drop, args.objective).to_dict(), indent=2))
        return
    _print_search(_store(args), args.id, args.max_drop, args.objective)


def _maybe_start_worker(args: argparse.Namespace, store: Store) -> None:
    if args.start_worker:
        from workbench.worker import ensure_worker

        started = ensure_worker(store.home)
        state = "started a background worker" if started else "a background worker already runs"
        print(f"{state} (log: {store.home / 'worker.log'})", file=sys.stderr)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _runs(args: argparse.Namespace) -> None:
    import time

    runs = _store(args).list(status=args.status, sweep_id=args.sweep, limit=args.limit)
    if not runs:
        print("no runs")
        return
    now = time.time()
    rows = [{"id": r.id, "name": r.name[:40], "status": r.status, "progress": f"{100 * r.progress:.0f}%",
             "stage": r.stage[:20], "age": _age(now - r.created),
             "accuracy": ((r.metrics or {}).get("final") or {}).get("accuracy"), "sweep": r.sweep_id}
            for r in runs]
    print(text_table(rows))


def _spec_line(spec: dict) -> str:
    """`digits-mlp on digits: prune(sparsity=0.9) -> quantize(method=static)`, listing non-default fields only."""
    from workbench.specs import STAGES, RunSpec, SpecError, stage_dict

    try:
        parsed = RunSpec.from_dict(spec)
    except SpecError as exc:
        return f"(unreadable recipe: {exc})"
    parts = []
    for stage in parsed.stages:
        default = stage_dict(STAGES[stage.kind]())[stage.kind]
        fields = {k: v for k, v in stage_dict(stage)[stage.kind].items() if default.get(k) != v}
        parts.append(f"{stage.kind}({', '.join(f'{k}={v}' for k, v in fields.items())})")
    return f"{parsed.model.label} on {parsed.data.label}: {' -> '.join(parts) or 'baseline only'}"


def _when(stamp: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def _show(args: argparse.Namespace) -> None:
    store = _store(args)
    run = store.get(_run_id(args.id))
    print(f"run {run.id}: {run.name}")
    print(f"  status    {run.status} (attempt {run.attempts})" + ("; cancel requested" if run.cancel_requested else ""))
    print(f"  progress  {100 * run.progress:.0f}% {run.stage}: {run.message}".rstrip(": "))
    print(f"  recipe    {_spec_line(run.spec)}")
    print(f"  times     created {_when(run.created)}, started {_when(run.started)}, finished {_when(run.finished)}")
    print(f"  worker    {run.worker_id or '-'}; sweep {run.sweep_id or '-'}")
    if run.error:
        print("  error     " + run.error.rstrip().replace("\n", "\n            "))
    if run.metrics and run.metrics.get("rows"):
        print("\n" + text_table(run.metrics["rows"]))
    folder = store.run_dir(run.id)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else []
    print("\nartifacts:" + "".join(f"\n  {p}" for p in files) if files else "\nartifacts: none")


def _why(args: argparse.Namespace) -> None:
    from workbench.compare import artifact_path, load_report
    from workbench.diagnosis import diagnose, render_text

    store = _store(args)
    run = store.get(_run_id(args.id))
    report = load_report(store, run.id)
    if report is None:
        raise WorkbenchError(f"run {run.id}: no report to diagnose (status {run.status})")
    try:
        model = artifact_path(store, run.id, "model")
    except WorkbenchError:
        model = None     # the report alone still explains most of it
    print(render_text(diagnose(report, -1, model), title=f"run {run.id}: {run.name}"))


def _versus(args: argparse.Namespace) -> None:
    from workbench.compare import load_report, runs_frame, versus_frame

    store = _store(args)
    runs = [store.get(_run_id(i)) for i in dict.fromkeys([args.reference, *args.ids])]
    for run in runs:
        if run.status != "succeeded":
            raise WorkbenchError(f"run {run.id}: {run.status}, so it has no answers to compare")
    reports = {run.id: load_report(store, run.id) for run in runs}
    frame = versus_frame(runs_frame(store, runs, reports), reports, runs[0].id)
    print(f"against run {runs[0].id} ({runs[0].name}), sample by sample on the same test samples:")
    print(text_table([{k: _cell(v) for k, v in row.items()} for row in frame.to_dict("records")]))


def _cell(value: object) -> object:
    """A table cell: NaN as blank, floats to 4 significant places."""
    if isinstance(value, float):
        return None if value != value else f"{value:.4g}"
    return value


def _cancel(args: argparse.Namespace) -> None:
    store = _store(args)
    run = store.get(_run_id(args.id))
    if run.done:
        raise WorkbenchError(f"run {run.id}: already {run.status}")
    run = store.request_cancel(run.id)
    print(f"run {run.id}: cancelled" if run.status == "cancelled"
          else f"run {run.id}: cancel requested; its worker stops it within a few seconds")


def _retry(args: argparse.Namespace) -> None:
    run = _store(args).retry(_run_id(args.id))
    print(f"run {run.id}: queued again")


def _delete(args: argparse.Namespace) -> None:
    run_id = _run_id(args.id)
    _store(args).delete(run_id)
    print(f"run {run_id}: deleted")


def _sweep_summary(args: argparse.Namespace) -> None:
    from workbench.jobs import sweep_summary

    store = _store(args)
    rows = sweep_summary(store, args.id)
    if not rows:
        raise WorkbenchError(f"sweep {args.id}: no such sweep")
    print(text_table(rows))
    groups = sweep_summary(store, args.id, over_seeds=True)
    if any(len(g["runs"].split(",")) > 1 for g in groups):
        print("\nover seeds (mean ± sample std of the succeeded runs):")
        print(text_table([_seed_cells(g) for g in groups]))


def _seed_cells(group: dict) -> dict:
    cells = {k: group[k] for k in ("setting", "runs", "seeds", "n", "status")}
    for key, value in group.items():
        if f"{key}_std" in group:
            cells[key] = f"{value:.4g} ± {group[f'{key}_std']:.2g}"
    return cells


def _execute(args: argparse.Namespace) -> None:
    from workbench.jobs import execute

    store = _store(args)
    run = store.get(_run_id(args.id))
    if run.status != "running":
        raise WorkbenchError(f"run {run.id}: is {run.status}, not claimed by a worker; `workbench worker` runs it")
    print(f"run {run.id}: {execute(store, run.id)}")


def _executor(args: argparse.Namespace) -> Executor | None:
    address = args.ray or os.environ.get("WORKBENCH_RAY_ADDRESS")
    if not address:
        return None
    from workbench.ray_executor import RayExecutor

    executor = RayExecutor(address, num_gpus=args.ray_gpus)
    executor.connect()  # fail here on a bad address or a missing extra, before any run is claimed
    return executor


def _worker(args: argparse.Namespace) -> None:
    import signal
    import threading

    from workbench.worker import Worker, hold_worker_lock

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = _store(args)
    if args.auto and hold_worker_lock(store.home, args.lock_fd) is None:
        logging.getLogger("workbench.worker").info("a worker already serves %s; exiting", store.home)
        return
    worker = Worker(store, _executor(args), concurrency=args.concurrency)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.run(stop, until_idle=args.until_idle)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Compress a model and measure what it buys.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a recipe and write model.onnx, report.json and a log")
    run.add_argument("recipe")
    run.add_argument("--out", required=True, help="output folder")
    run.add_argument("--threads", type=int, help="override measure.threads")
    run.add_argument("--batch-sizes", type=int, nargs="+", metavar="N",
                     help="override measure.batch_sizes (default 1 256; e.g. 1 8 for a large model)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_run)
    inspect = sub.add_parser("inspect", help="print a model's per-layer summary")
    inspect.add_argument("model", help="sample name or model file (.onnx .pt2 .pt .ts .safetensors)")
    inspect.add_argument("--arch", help="built-in architecture for a .safetensors file")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=_inspect)
    unpack = sub.add_parser("unpack", help="restore model.onnx from a clustered run's graph.onnx and weights.packed")
    unpack.add_argument("graph", help="graph.onnx (the network without the packed weights)")
    unpack.add_argument("packed", help="weights.packed")
    unpack.add_argument("-o", "--output", required=True, help="the ONNX model to write")
    unpack.set_defaults(func=_unpack)
    script = sub.add_parser("export-script", help="write a Python script that reproduces a recipe")
    script.add_argument("recipe")
    script.add_argument("-o", "--output", help="script path (default: print)")
    script.set_defaults(func=_export_script)
    check = sub.add_parser("check", help="validate a recipe and print it with all defaults filled in")
    check.add_argument("recipe")
    check.set_defaults(func=_check)
    sens = sub.add_parser("sensitivity", help="per-layer accuracy drop vs sparsity and bits, and an allocation")
    sens.add_argument("model", help="sample name, model file or recipe (.yaml: its model and data)")
    sens.add_argument("--arch", help="built-in architecture for a .safetensors file")
    sens.add_argument("--data", help="digits (default) or an evaluation file (.npz / .csv)")
    sens.add_argument("--label-column", help="label column of a .csv data file")
    sens.add_argument("--target", type=float, default=0.9, help="overall sparsity to allocate (default 0.9)")
    sens.add_argument("--size-kb", type=float, help="allocate for this weight size instead (minimum storage, KB)")
    sens.add_argument("--bits", type=int, default=32, help="bits per weight for --size-kb (default 32)")
    sens.add_argument("--bits-kb", type=float, help="allocate per-layer weight bits for this size instead "
                                                      "(dense weights x bits / 8, KB): a quantize stage")
    sens.add_argument("--bits-choices", type=int, nargs="+", metavar="BITS",
                      help="bit widths --bits-kb picks from (default: every measured width; 8 4 2 gives "
                           "MatMulNBits for Linear-only models)")
    sens.add_argument("--exclude", action="append", default=[], metavar="LAYER",
                      help="keep a layer dense (float with --bits-kb); repeatable")
    sens.add_argument("--json", action="store_true")
    sens.set_defaults(func=_sensitivity)
    _add_queue_commands(sub)
    _add_worker_commands(sub)
    sub.metavar = "{" + ",".join(name for name in sub.choices if name != "execute") + "}"
    return parser


def _add_queue_commands(sub: argparse._SubParsersAction) -> None:
    from workbench.store import STATUSES

    home = argparse.ArgumentParser(add_help=False)
    home.add_argument("--home", help="data dir (default: $WORKBENCH_HOME or ~/.workbench)")
    for name, helptext, func in (("submit", "queue a recipe for the background worker; prints the run id", _submit),
                                 ("sweep", "queue every combination of a grid as one sweep", _sweep)):
        cmd = sub.add_parser(name, parents=[home], help=helptext)
        cmd.add_argument("recipe")
        cmd.add_argument("--start-worker", action="store_true", help="start a background worker if none runs")
        cmd.set_defaults(func=func)
    sub.choices["submit"].add_argument("--name", help="run name (default: the recipe's name)")
    sub.choices["sweep"].add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                                      help="sparsity, bits, seed or STAGE.FIELD (e.g. prune.sparsity); repeatable")
    _add_search_commands(sub, home)
    runs = sub.add_parser("runs", parents=[home], help="list runs, newest first")
    runs.add_argument("--status", choices=STATUSES)
    runs.add_argument("--sweep", help="only the runs of this sweep id")
    runs.add_argument("--limit", type=int, default=50)
    runs.set_defaults(func=_runs)
    for name, helptext, func in (("show", "a run's details, metrics and artifacts", _show),
                                 ("cancel", "cancel a queued or running run", _cancel),
                                 ("retry", "queue a failed, cancelled or interrupted run again", _retry),
                                 ("delete", "delete a finished run and its artifacts", _delete),
                                 ("sweep-summary", "one row per run of a sweep", _sweep_summary),
                                 ("why", "why isn't it faster? a finished run's diagnosis", _why)):
        cmd = sub.add_parser(name, parents=[home], help=helptext)
        cmd.add_argument("id", help="sweep id" if name == "sweep-summary" else "run id")
        cmd.set_defaults(func=func)
    versus = sub.add_parser("versus", parents=[home], help="finished runs against one, sample by sample: which "
                            "samples changed side, and whether that is beyond test-set noise (exact McNemar test)")
    versus.add_argument("reference", help="run id to set the others against")
    versus.add_argument("ids", nargs="+", help="run ids")
    versus.set_defaults(func=_versus)


def _add_search_commands(sub: argparse._SubParsersAction, home: argparse.ArgumentParser) -> None:
    from workbench.search import OBJECTIVES  # numpy and the store, no torch

    search = sub.add_parser("search", parents=[home], help="queue candidates under an accuracy bar as one sweep")
    search.add_argument("recipe", help="recipe (.yaml), model file or sample name")
    search.add_argument("--max-drop", type=float, required=True, help="tolerated accuracy drop (percentage points)")
    search.add_argument("--trials", type=int, help="candidates to queue (default: the whole space)")
    search.add_argument("--minutes", type=float, help="cancel candidates still queued after this many minutes")
    search.add_argument("--sparsity", help="prune sparsities to try (0 = no pruning), e.g. 0,0.5,0.9")
    search.add_argument("--bits", help="bitwidths to try (32 = no quantization), e.g. 32,8,4")
    search.add_argument("--ratio", help="structured ratios to try (0 = none), e.g. 0,0.25,0.5; torch models only")
    search.add_argument("--objective", choices=tuple(OBJECTIVES), default="size",
                        help="what the recommendation minimises among candidates meeting the bar: gzip of the "
                             "file, latency, or weights.packed (a recipe with a cluster stage)")
    search.add_argument("--start-worker", action="store_true", help="start a background worker if none runs")
    search.add_argument("--wait", action="store_true", help="start a worker, wait for every candidate, summarise")
    search.set_defaults(func=_search)
    summary = sub.add_parser("search-summary", parents=[home], help="every candidate of a search against its bar")
    summary.add_argument("id", help="search (sweep) id")
    summary.add_argument("--max-drop", type=float, help="another bar than the search's own")
    summary.add_argument("--objective", choices=tuple(OBJECTIVES))
    summary.add_argument("--json", action="store_true")
    summary.set_defaults(func=_search_summary)


def _add_worker_commands(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser("worker", help="claim and execute queued runs until stopped (Ctrl-C / SIGTERM)")
    worker.add_argument("--home", help="data dir (default: $WORKBENCH_HOME or ~/.workbench)")
    worker.add_argument("--concurrency", type=int, default=1, help="runs executed at once")
    worker.add_argument("--until-idle", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--auto", action="store_true",
                        help="the auto-started worker: hold HOME/worker.lock, exit quietly if another holds it")
    worker.add_argument("--lock-fd", type=int, help=argparse.SUPPRESS)
    worker.add_argument("--ray", metavar="ADDRESS", help="execute runs on a Ray cluster (or $WORKBENCH_RAY_ADDRESS)")
    worker.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs each run asks Ray for")
    worker.set_defaults(func=_worker)
    execute = sub.add_parser("execute")  # internal: one claimed run, in the worker's child process
    execute.add_argument("id")
    execute.add_argument("--home")
    execute.set_defaults(func=_execute)


def main(argv: list[str] | None = None) -> None:
    from workbench.models import secure_process

    try:
        secure_process()  # first, before anything imports onnxruntime; the worker's run processes inherit it
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
