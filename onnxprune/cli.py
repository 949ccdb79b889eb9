"""The ``onnxprune`` command line: a thin layer over the Python API. Errors are one line, exit 2."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from typing import TYPE_CHECKING, Any

import click

from onnxprune.errors import OnnxPruneError
from onnxprune.report import fmt, human_bytes, table

if TYPE_CHECKING:  # the workflow imports ONNX Runtime: loaded only when a target is given
    from onnxprune.workflows.target import Target

log = logging.getLogger("onnxprune")


class _Group(click.Group):
    """Turns onnxprune errors into one line on stderr and a non-zero exit, tracebacks only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OnnxPruneError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug in onnxprune: still one line unless --debug
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
            sys.exit(1)


def _emit(data: dict[str, Any], text: str, as_json: bool) -> None:
    """Print one JSON object or the human-readable text."""
    if as_json:
        from onnxprune.report import json_default

        click.echo(json.dumps(data, default=json_default))
    else:
        click.echo(text)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--threads", "thread_total", type=int, help="Threads for torch and ONNX Runtime [default: the idle "
              "cores of this process].")
@click.version_option(package_name="onnxprune")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int, thread_total: int | None) -> None:
    """Prune ONNX models post-training and validate them in ONNX Runtime."""
    ctx.obj = {"debug": debug}
    level = logging.DEBUG if verbose > 1 or debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if thread_total is not None:
        from onnxprune.threads import set_threads

        set_threads(thread_total)


_INPUT_SHAPE = click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=D0,D1,...",
                            help="Shape of an input with dynamic dims (repeat per input), e.g. x=1,3,736,736.")


def _shapes(texts: tuple[str, ...]) -> dict[str, tuple[int, ...]] | None:
    from onnxprune.data import parse_input_shapes

    return parse_input_shapes(texts) or None


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@_INPUT_SHAPE
@click.option("--data", type=click.Path(dir_okay=False), help="Count MACs at the shapes of this data's samples.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect(model: str, input_shape: tuple[str, ...], data: str | None, as_json: bool) -> None:
    """Opset, inputs/outputs, parameters, prunable tensors, MACs, channel groups, unconvertible ops."""
    from onnxprune.inspection import inspect_model

    info = inspect_model(model, _shapes(input_shape), data)
    lines = [f"{info.path}: opset {info.opset}, IR {info.ir_version}, producer {info.producer or '?'}"]
    for kind, values in (("input", info.inputs), ("output", info.outputs)):
        lines += [f"  {kind:6} {v['name']}: {v['dtype']} {v['shape']}" for v in values]
    s = info.stats
    macs = fmt(s.macs) if s.macs is not None else "unknown (dynamic dims: give --input-shape or --data)"
    lines.append(f"  parameters {fmt(s.params)}, prunable {fmt(s.prunable_params)} (sparsity {s.sparsity:.1%}), "
                 f"MACs/sample {macs}, file {human_bytes(s.file_bytes)}")
    lines += [f"  canonicalization: {c}" for c in info.canonical_changes]
    lines.append(table(["tensor", "op", "shape", "size", "sparsity"],
                       [[t.name, t.op_type, "x".join(map(str, t.shape)), t.size, f"{t.sparsity:.1%}"]
                        for t in s.tensors], title="prunable tensors"))
    if info.groups:
        lines.append(table(["group", "channels", "producers", "consumers", "prunable"],
                           [[g["index"], g["size"], ", ".join(g["producers"]), ", ".join(g["consumers"]),
                             "yes" if g["prunable"] else f"no: {g['reason']}"] for g in info.groups],
                           title="channel groups"))
    if info.unsupported:
        lines.append("no torch view for: " + ", ".join(f"{u['op']}-{u['version']} ({u['node']})"
                                                         for u in info.unsupported))
    _emit(info.to_dict(), "\n".join(lines), as_json)


def _parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    """KEY=VALUE strings from -O into a dict."""
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="-O")
        key, value = pair.split("=", 1)
        options[key.strip()] = value.strip()
    return options


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Pruned model to write.")
@click.option("-m", "--method", default="magnitude", show_default=True, help="See `onnxprune methods`.")
@click.option("-s", "--sparsity", type=float, default=None, help="Fraction to remove, in [0, 1) (default 0.5).")
@click.option("--calib", type=click.Path(dir_okay=False), help="Calibration data (.npz / .npy).")
@_INPUT_SHAPE
@click.option("--report", type=click.Path(dir_okay=False), help="Write the outcome as JSON here.")
@click.option("--compress", is_flag=True, help="Store sparse weights as sparse initializers (smaller file).")
@click.option("--onnxslim", "use_onnxslim", is_flag=True, help="Simplify the graph with onnxslim first.")
@click.option("--allocation", help="global | uniform sparsity allocation (unstructured methods).")
@click.option("--pattern", help="N:M semi-structured pattern, e.g. 2:4 (chita).")
@click.option("--max-memory", help="Memory budget, e.g. 2G (chita).")
@click.option("--rows", type=int, help="Gradient rows n (chita).")
@click.option("--group", type=int, help="Prune only this channel group (structured methods).")
@click.option("--round-to", type=int, help="Keep channel counts multiples of this (structured methods).")
@click.option("--importance", help="Channel importance: l1 | l2 | taylor | random (structured methods).")
@click.option("--skip-first", is_flag=True, default=None, help="Leave the first prunable layer dense.")
@click.option("--skip-last", is_flag=True, default=None, help="Leave the last prunable layer dense.")
@click.option("--seed", type=int, help="Random seed (default 0).")
@click.option("-O", "--option", "extra", multiple=True, metavar="KEY=VALUE", help="Any other method option.")
@click.option("--max-accuracy-drop", type=float, help="Budget: find the highest sparsity losing at most this "
              "many accuracy points on --data.")
@click.option("--min-agreement", type=float, help="Budget: highest sparsity keeping this top-1 agreement (%) with "
              "the input model on --data (no labels needed).")
@click.option("--data", type=click.Path(dir_okay=False), help="Evaluation data for a budget search.")
@click.option("--target-speedup", type=float, help="Target: choose each channel group's width so that ORT runs the "
              "model this many times faster (channel methods; instead of --sparsity).")
@click.option("--target-macs", type=float, help="Target: choose each channel group's width so that this fraction of "
              "the MACs is left, e.g. 0.5 (channel methods; instead of --sparsity).")
@click.option("--target-batch", type=int, help="Batch the --target-speedup is timed at [default: 8, or the model's "
              "fixed batch].")
@click.option("--target-table", type=click.Path(dir_okay=False), help="Reuse the latency table of an earlier "
              "--target-speedup run's --report (same model, batch and machine) instead of timing it again.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def prune(model: str, output: str, method: str, calib: str | None, input_shape: tuple[str, ...], report: str | None,
          compress: bool, use_onnxslim: bool, extra: tuple[str, ...], max_accuracy_drop: float | None,
          min_agreement: float | None, data: str | None, target_speedup: float | None, target_macs: float | None,
          target_batch: int | None, target_table: str | None, as_json: bool, **flags: Any) -> None:
    """Prune MODEL with a method and write the result to OUTPUT (never overwriting MODEL)."""
    from onnxprune.pipeline import prune as run_prune

    options = {k: v for k, v in flags.items() if v is not None}
    options.update(_parse_options(extra))
    if target_speedup is not None or target_macs is not None or target_batch is not None or target_table is not None:
        from onnxprune.errors import ConfigError
        from onnxprune.workflows.target import Target

        if max_accuracy_drop is not None or min_agreement is not None:
            raise ConfigError("give either a target (--target-speedup/--target-macs) or an accuracy budget, not both")
        _target_prune(model, output, method, calib, report, compress, use_onnxslim, _shapes(input_shape),
                      Target(target_speedup, target_macs, target_batch, target_table), options, as_json)
        return
    if max_accuracy_drop is not None or min_agreement is not None:
        _budget_search(model, output, method, calib, report, data, max_accuracy_drop, min_agreement, options,
                       as_json)
        return
    outcome = run_prune(model, output, method, calib=calib, report=report, compress=compress,
                        use_onnxslim=use_onnxslim, input_shapes=_shapes(input_shape), **options)
    b, a = outcome.before, outcome.after
    rows = [["parameters", b.params, a.params], ["prunable sparsity", f"{b.sparsity:.1%}", f"{a.sparsity:.1%}"],
            ["MACs / sample", b.macs if b.macs is not None else "unknown", a.macs if a.macs is not None else "unknown"],
            ["MACs skipping zeros", b.sparse_macs, a.sparse_macs],
            ["file size", human_bytes(b.file_bytes), human_bytes(a.file_bytes)]]
    text = "\n".join([f"wrote {outcome.output} ({method}, sparsity {outcome.config['sparsity']})",
                      table(["", "before", "after"], rows),
                      "time: " + ", ".join(f"{k} {v:.1f}s" for k, v in outcome.timings.items())])
    _emit(outcome.to_dict(), text, as_json)


def _target_prune(model: str, output: str, method: str, calib: str | None, report: str | None, compress: bool,
                  use_onnxslim: bool, input_shapes: dict[str, tuple[int, ...]] | None, target: Target,
                  options: dict[str, Any], as_json: bool) -> None:
    """``prune`` to a target: per-group widths, the table of each group's width and error, the measured figure."""
    from onnxprune.pipeline import prune as run_prune

    outcome = run_prune(model, output, method, calib=calib, report=report, compress=compress,
                        use_onnxslim=use_onnxslim, input_shapes=input_shapes, target=target, **options)
    found = outcome.details["target"]
    rows = [[g["group"], g["before"], g["after"], f"{g['error']:.4g}"] for g in found["groups"]]
    wanted = target.figure(target.ratio)
    timed = f" ({found['provider']}, batch {found['batch']})" if found["batch"] is not None else ""
    lines = [f"wrote {outcome.output} ({method}, target {wanted})",
             table(["group", "channels", "kept", "error"], rows, title="widths"),
             f"measured{timed}: {target.figure(found['measured'])} ({'meets' if found['met'] else 'MISSES'} the "
             f"target {wanted}; the table predicted {target.figure(found['predicted'])}; "
             f"{len(found['tries'])} allocation(s))",
             f"MACs / sample: {fmt(outcome.before.macs)} -> {fmt(outcome.after.macs)}, parameters "
             f"{fmt(outcome.before.params)} -> {fmt(outcome.after.params)}",
             "time: " + ", ".join(f"{k} {v:.1f}s" for k, v in outcome.timings.items())]
    _emit(outcome.to_dict(), "\n".join(lines), as_json)


def _budget_search(model: str, output: str, method: str, calib: str | None, report: str | None, data: str | None,
                   max_accuracy_drop: float | None, min_agreement: float | None, options: dict[str, Any],
                   as_json: bool) -> None:
    """``prune`` with a budget: bisect the sparsity, write the best model within budget."""
    from onnxprune.workflows.budget import Budget, search_sparsity
    from onnxprune.errors import ConfigError
    from onnxprune.report import write_json

    budget = Budget(max_accuracy_drop, min_agreement)
    if data is None:
        raise ConfigError("a budget search needs evaluation data: pass --data DATA.npz")
    result = search_sparsity(model, output, method, budget, data=data, calib=calib, **options)
    if report is not None:
        write_json(result.to_dict(), report, inputs=[model])
    rows = [[f"{t.sparsity:.4f}", t.accuracy, t.agreement, "yes" if t.within else "no", t.error or ""]
            for t in sorted(result.trials, key=lambda t: t.sparsity)]
    lines = [table(["sparsity", "acc %", "agree %", "within budget", "error"], rows, title="trials")]
    if result.sparsity is None:
        lines.append("no sparsity in the search range stays within the budget; nothing was written")
    else:
        lines.append(f"wrote {output}: {method} at sparsity {result.sparsity:.4f} (accuracy {fmt(result.accuracy)}, "
                     f"dense {fmt(result.dense_accuracy)}, agreement {fmt(result.agreement)})")
    _emit(result.to_dict(), "\n".join(lines), as_json)
    if result.sparsity is None:
        sys.exit(3)


@cli.command(name="eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Evaluation data (.npz / .npy).")
@click.option("--reference", type=click.Path(dir_okay=False), help="Reference model for fidelity figures.")
@click.option("--batch-size", default=256, show_default=True, type=int)
@click.option("--threads", type=int, help="ORT intra-op threads [default: onnxprune --threads].")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--iou-threshold", default=0.5, show_default=True, type=float,
              help="Threshold for the IoU of outputs that are maps in [0, 1].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_command(model: str, data: str, reference: str | None, batch_size: int, threads: int | None,
                 device: str, iou_threshold: float, as_json: bool) -> None:
    """Accuracy (with labels) and fidelity of every output to a reference, measured in ONNX Runtime:
    agreement for class scores, IoU for maps in [0, 1], cosine and relative L2 for all."""
    from onnxprune.validate.evaluation import evaluate

    result = evaluate(model, data, reference=reference, batch_size=batch_size, threads=threads, device=device,
                      iou_threshold=iou_threshold)
    rows = [[k, v] for k, v in result.to_dict().items() if v is not None and k != "outputs"]
    text = table(["metric", "value"], rows, title=f"{model} on {data}")
    if result.outputs:
        text += "\n" + table(["output", "shape", "kind", "agree %", f"IoU@{iou_threshold:g}", "cosine", "rel L2",
                              "max |diff|"],
                             [[o.name, "x".join(map(str, o.shape)), o.kind, o.agreement, o.iou, f"{o.cosine:.4f}",
                               f"{o.rel_l2:.4g}", f"{o.max_abs_diff:.4g}"] for o in result.outputs],
                             title=f"fidelity to {reference}")
    _emit(result.to_dict(), text, as_json)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--vs", type=click.Path(dir_okay=False), help="Second model, timed interleaved (ABAB).")
@click.option("--batch", default=1, show_default=True, type=int)
@click.option("--threads", type=int, help="ORT intra-op threads [default: onnxprune --threads].")
@click.option("--runs", default=100, show_default=True, type=int, help="Timed runs (>= 50).")
@click.option("--warmup", default=10, show_default=True, type=int)
@click.option("--data", type=click.Path(dir_okay=False), help="Take inputs from this data file.")
@_INPUT_SHAPE
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench(model: str, vs: str | None, batch: int, threads: int | None, runs: int, warmup: int,
          data: str | None, input_shape: tuple[str, ...], device: str, as_json: bool) -> None:
    """Latency (median, p90) in ONNX Runtime; with --vs, the speed-up of MODEL over OTHER."""
    from onnxprune.validate.bench import benchmark

    r = benchmark(model, vs=vs, batch=batch, threads=threads, runs=runs, warmup=warmup, device=device, data=data,
                  input_shapes=_shapes(input_shape))
    rows = [[r.model, r.median_ms, r.p90_ms]] + ([[r.vs, r.vs_median_ms, r.vs_p90_ms]] if r.vs else [])
    text = table(["model", "median ms", "p90 ms"], rows,
                 title=f"{r.provider} provider, batch {r.batch}, {r.threads} threads, {r.runs} runs")
    if r.ratio is not None:
        text += f"\nspeed-up of {r.model} over {r.vs}: {r.ratio:.2f}x"
    _emit(r.to_dict(), text, as_json)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--out-dir", required=True, type=click.Path(file_okay=False), help="Folder for models and reports.")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Evaluation data (.npz / .npy).")
@click.option("--calib", type=click.Path(dir_okay=False), help="Calibration data for methods that need it.")
@click.option("--methods", "method_list", help="Comma-separated methods [default: magnitude,chita++,l1-channel,"
              "intrafusion].")
@click.option("--sparsities", help="Comma-separated sparsities [default: 0.3,0.5,0.7,0.9].")
@click.option("--batch", default=32, show_default=True, type=int, help="Batch size for latency.")
@click.option("--threads", type=int, help="ORT intra-op threads [default: onnxprune --threads].")
@click.option("--runs", default=50, show_default=True, type=int, help="Timed runs per model (>= 50).")
@click.option("-O", "--option", "extra", multiple=True, metavar="[METHOD.]KEY=VALUE",
              help="Method option for every swept method that has it (round_to=8), or for one (chita++.stages=5).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sweep(model: str, out_dir: str, data: str, calib: str | None, method_list: str | None,
          sparsities: str | None, batch: int, threads: int | None, runs: int, extra: tuple[str, ...],
          as_json: bool) -> None:
    """Prune MODEL with every method × sparsity, measure each in ORT, write reports and plots."""
    from onnxprune.workflows.sweeps import DEFAULT_METHODS, DEFAULT_SPARSITIES, parse_list, sweep_table, sweep as run_sweep

    report = run_sweep(model, out_dir, data=data, calib=calib,
                       methods=parse_list(method_list) if method_list else DEFAULT_METHODS,
                       sparsities=parse_list(sparsities, float) if sparsities else DEFAULT_SPARSITIES,
                       batch=batch, threads=threads, runs=runs, options=_parse_options(extra),
                       command="onnxprune " + " ".join(sys.argv[1:]))
    _emit(report.to_dict(), sweep_table(report), as_json)


@cli.command()
def methods() -> None:
    """List the pruning methods and their options."""
    import dataclasses

    from onnxprune.methods import METHODS

    rows = [[spec.name, "structured" if spec.structured else "unstructured", "yes" if spec.needs_calib else "no",
             spec.summary] for spec in METHODS.values()]
    lines = [table(["method", "kind", "needs data", "what"], rows), "", "options (set with -O name=value; defaults shown):"]
    for spec in METHODS.values():
        options = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(spec.config_cls))
        lines.append(f"  {spec.name}: {options}")
    click.echo("\n".join(lines))


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), help="Keep the pruned models in this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def demo(out: str | None, as_json: bool) -> None:
    """The whole pipeline on the bundled CNN with every method: prune, eval, bench, one table."""
    from onnxprune.workflows.demo import run_demo

    result = run_demo(out)
    _emit(result.to_dict(), result.text(), as_json)


def main() -> None:
    """Console-script entry point; sets how idle OpenMP threads wait before torch loads (``threads.choose_waits``)."""
    from onnxprune.threads import choose_waits

    choose_waits()
    cli(prog_name="onnxprune")


if __name__ == "__main__":
    main()
