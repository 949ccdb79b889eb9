"""The ``onnxprune`` command line: a thin layer over the Python API, one entry point per mode. Errors are
one line (a JSON object under ``--json``), exit 2; ``--json``, ``--debug`` and ``-v`` go before or after
the command."""

from __future__ import annotations

import json
import logging
import sys
import traceback
import warnings
from typing import Any, Callable

import click

from onnxprune.errors import OnnxPruneError, QualityError
from onnxprune.report import fmt, percent, table
from onnxprune.units import format_bytes

log = logging.getLogger("onnxprune")


def _flags(ctx: click.Context) -> dict[str, Any]:
    """The flags every command shares, kept on the root context (``--json``, ``--debug``, ``-v``)."""
    root = ctx.find_root()
    if root.obj is None:
        root.obj = {"json": False, "debug": False, "verbose": 0}
    return root.obj


def _fail(ctx: click.Context, message: str, kind: str, code: int) -> None:
    """One line on stderr, or one JSON object on stdout under --json; then exit ``code``."""
    if _flags(ctx)["json"]:
        click.echo(json.dumps({"error": message, "type": kind, "exit_code": code}))
    else:
        click.echo(f"error: {message}" if kind != "internal" else message, err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns onnxprune errors into one line and a non-zero exit, tracebacks only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OnnxPruneError as exc:
            if _flags(ctx)["debug"]:
                traceback.print_exc()
            _fail(ctx, str(exc), type(exc).__name__, 3 if isinstance(exc, QualityError) else 2)
        except KeyboardInterrupt:
            kept = _flags(ctx).get("resume")
            click.echo("interrupted; nothing was written" + (f" (finished layers are kept in {kept}: the same command "
                                                              f"goes on from there)" if kept else ""), err=True)
            sys.exit(130)
        except click.UsageError as exc:
            if not _flags(ctx)["json"]:
                raise
            _fail(ctx, exc.format_message(), "UsageError", exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug in onnxprune: still one line unless --debug
            if _flags(ctx)["debug"]:
                traceback.print_exc()
            _fail(ctx, f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                  "internal", 1)


def _logging(ctx: click.Context) -> None:
    """Log level from -v/--debug."""
    flags = _flags(ctx)
    level = logging.DEBUG if flags["verbose"] > 1 or flags["debug"] else logging.INFO if flags["verbose"] else logging.WARNING
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)


def _set(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        flags = _flags(ctx)
        if name == "verbose":
            flags[name] = max(flags[name], value)
        else:
            flags[name] = flags[name] or value
        _logging(ctx)
        return value
    return callback


def _shared(command: Callable) -> Callable:
    """--json, --debug and -v on a command (the group takes them too, so either position works)."""
    for option in reversed((
            click.option("--json", "as_json", is_flag=True, is_eager=True, expose_value=False, callback=_set("json"),
                         help="Print one JSON object (errors too)."),
            click.option("--debug", is_flag=True, is_eager=True, expose_value=False, callback=_set("debug"),
                         help="Show tracebacks on errors."),
            click.option("-v", "--verbose", count=True, is_eager=True, expose_value=False, callback=_set("verbose"),
                         help="More log output (-v info, -vv debug)."))):
        command = option(command)
    return command


@click.group(cls=_Group)
@_shared
@click.option("--threads", "thread_total", type=int, help="Threads for torch, ONNX Runtime and numpy's BLAS "
              "[default: the idle cores of this process].")
@click.version_option(package_name="onnxprune")
@click.pass_context
def cli(ctx: click.Context, thread_total: int | None) -> None:
    """Prune ONNX models post-training and validate them in ONNX Runtime."""
    _logging(ctx)
    if thread_total is not None:
        from onnxprune.threads import set_threads

        set_threads(thread_total)


def _emit(data: dict[str, Any], text: str) -> None:
    """Print one JSON object (under --json) or the human-readable text."""
    if _flags(click.get_current_context())["json"]:
        from onnxprune.report import json_default

        click.echo(json.dumps(data, default=json_default))
    else:
        click.echo(text)


_INPUT_SHAPE = click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=D0,D1,...",
                            help="Shape of an input with dynamic dims (repeat per input), e.g. x=1,3,736,736.")


def _shapes(texts: tuple[str, ...]) -> dict[str, tuple[int, ...]] | None:
    from onnxprune.data import parse_input_shapes

    return parse_input_shapes(texts) or None


_SOURCE_FLAGS = ("preprocess", "tokenizer", "text_field", "max_length", "padding")


def _source_options(command: Callable) -> Callable:
    """How --calib and --data sources are read (images, text); see README, "Data sources"."""
    for option in reversed((
            click.option("--preprocess", metavar="PRESET[,KEY=VALUE...]",
                         help="Images: imagenet | yolo | paddle | raw, then size=HxW, resize=stretch|letterbox|"
                              "short-crop|pad-right, order=rgb|bgr, scale=, mean=a,b,c, std=a,b,c, layout=nchw|nhwc, "
                              "pad=, interp=, crop= [default: the model's metadata (Ultralytics), else required]."),
            click.option("--tokenizer", type=click.Path(dir_okay=False), help="Text: a tokenizer.json."),
            click.option("--text-field", default="text", show_default=True, help="Text: the field of .jsonl lines."),
            click.option("--max-length", type=int, help="Text: tokens a sample is cut at [default: the model's "
                         "fixed length, else the tokenizer's, else 128]."),
            click.option("--padding", type=click.Choice(["longest", "max-length"]), default="longest",
                         show_default=True, help="Text: pad to the longest sample or to --max-length."))):
        command = option(command)
    return command


def _source(path: str | None, read: dict[str, Any]) -> Any:
    """A --calib/--data path with the source flags in ``read``, as onnxprune.Source."""
    from onnxprune.data import Source

    return None if path is None else Source(path, **{name: read[name] for name in _SOURCE_FLAGS if name in read})


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@_INPUT_SHAPE
@click.option("--data", help="Count MACs at the shapes of this data source's samples.")
@_source_options
@_shared
def inspect(model: str, input_shape: tuple[str, ...], data: str | None, **read: Any) -> None:
    """Opset, inputs/outputs, parameters, prunable tensors, MACs, channel groups, unconvertible ops."""
    from onnxprune.inspection import inspect_model

    source = _source(data, read)
    _unread(read, source)
    info = inspect_model(model, _shapes(input_shape), source)
    lines = [f"{info.path}: opset {info.opset}, IR {info.ir_version}, producer {info.producer or '?'}"]
    for kind, values in (("input", info.inputs), ("output", info.outputs)):
        lines += [f"  {kind:6} {v['name']}: {v['dtype']} {v['shape']}" for v in values]
    s = info.stats
    macs = fmt(s.macs) if s.macs is not None else "unknown (dynamic dims: give --input-shape or --data)"
    lines.append(f"  parameters {fmt(s.params)}, prunable {fmt(s.prunable_params)} (sparsity {s.sparsity:.1%}), "
                 f"MACs/sample {macs}, file {format_bytes(s.file_bytes)}")
    lines += [f"  canonicalization: {c}" for c in info.canonical_changes]
    lines.append(table(["tensor", "op", "shape", "size", "sparsity"],
                       [[t.name, t.op_type, "x".join(map(str, t.shape)), t.size, f"{t.sparsity:.1%}"]
                        for t in s.tensors], title="prunable tensors"))
    if info.groups:
        prunable = [g for g in info.groups if g["prunable"]]
        share = sum(g["macs_share"] or 0 for g in prunable)
        lines.append(table(["group", "channels", "MACs %", "producers", "consumers", "prunable"],
                           [[g["index"], g["size"], percent(g["macs_share"]), ", ".join(g["producers"]),
                             ", ".join(g["consumers"]), "yes" if g["prunable"] else f"no: {g['reason']}"]
                            for g in info.groups],
                           title=f"channel groups: {len(prunable)} of {len(info.groups)} prunable, touching "
                                 f"{share:.0%} of the MACs (a node counts in every group it writes or reads)"))
    if info.unsupported:
        lines.append("no torch view for: " + ", ".join(f"{u['op']}-{u['version']} ({u['node']})"
                                                         for u in info.unsupported))
    _emit(info.to_dict(), "\n".join(lines))


def _parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    """KEY=VALUE strings from -O into a dict."""
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="-O")
        key, value = pair.split("=", 1)
        options[key.strip()] = value.strip()
    return options


def _stage_options(command: Callable) -> Callable:
    """--recover and --quantize with their settings: the stages after pruning (prune and sweep)."""
    for option in reversed((
            click.option("--recover", "recover_s", type=float, help="Recovery: distil the pruned model towards the "
                         "input model on the calibration data for at most this many seconds (1/8 of the samples held "
                         "out to stop on and to judge; never returns a worse model)."),
            click.option("--recover-steps", type=int, help="Recovery: at most this many steps (with or without "
                         "--recover)."),
            click.option("--recover-lr", type=float, default=1e-4, show_default=True,
                         help="Recovery: Adam's learning rate."),
            click.option("--recover-loss", type=click.Choice(["auto", "mse", "kl"]), default="auto", show_default=True,
                         help="Recovery: per output, KL for class scores and relative MSE otherwise (auto), or one "
                         "for all."),
            click.option("--quantize", type=click.Choice(["int8", "auto"]), help="INT8 as a last stage (ONNX Runtime "
                         "static quantization, QDQ, per-channel weights, calibrated on --calib): 'int8' always, 'auto' "
                         "only where ORT measures it faster within --quantize-max-drop of the float model."),
            click.option("--quantize-calibration", type=click.Choice(["minmax", "entropy", "percentile"]),
                         default="minmax", show_default=True, help="INT8: how activation ranges are set."),
            click.option("--quantize-exclude", help="INT8: op types or node names to leave in float, comma-separated."),
            click.option("--quantize-max-drop", type=float, default=1.0, show_default=True, help="INT8 auto: the loss "
                         "allowed, in percent of top-1 agreement with the float model (of cosine for other outputs)."),
    )):
        command = option(command)
    return command


def _resume_option(command: Callable) -> Callable:
    """--resume DIR (prune and sweep); the folder is named again if the run is interrupted."""
    def remember(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        _flags(ctx)["resume"] = value
        return value

    return click.option("--resume", type=click.Path(file_okay=False), callback=remember,
                        help="Keep every finished layer in this folder as it is done; the same command started again "
                        "with it goes on where it stopped (layer-wise methods: sparsegpt, wanda, chita).")(command)


_RAY = click.option("--ray", "ray_address", metavar="ADDRESS|auto|local",
                    help="Spread independent work over a Ray cluster (pip install 'onnxprune[ray]'): 'auto' joins the "
                    "one this machine belongs to, 'local' starts one on this machine, or HOST:PORT.")


def _recovery(flags: dict[str, Any], seed: int) -> Any:
    """The Recovery of --recover/--recover-steps (popped from ``flags`` with its settings), or None; its
    settings without a budget are refused."""
    budget = {"seconds": flags.pop("recover_s"), "steps": flags.pop("recover_steps")}
    settings = {"lr": flags.pop("recover_lr"), "loss": flags.pop("recover_loss")}
    if budget["seconds"] is None and budget["steps"] is None:
        if settings != {"lr": 1e-4, "loss": "auto"}:
            from onnxprune.errors import ConfigError

            raise ConfigError("--recover-lr/--recover-loss set how recovery runs: give it a budget with --recover "
                              "SECONDS or --recover-steps N")
        return None
    from onnxprune.view.distill import Recovery

    return Recovery(**budget, **settings, seed=seed)


def _quantization(flags: dict[str, Any]) -> Any:
    """The Quantization of --quantize (popped from ``flags`` with its settings), or None; settings without
    --quantize are refused."""
    mode = flags.pop("quantize")
    settings = {"calibration": flags.pop("quantize_calibration"), "exclude": flags.pop("quantize_exclude"),
                "max_drop": flags.pop("quantize_max_drop")}
    if mode is None:
        if settings != {"calibration": "minmax", "exclude": None, "max_drop": 1.0}:
            from onnxprune.errors import ConfigError

            raise ConfigError("--quantize-calibration/-exclude/-max-drop set how INT8 is made: add --quantize int8|auto")
        return None
    from onnxprune.runtime.quantize import Quantization

    exclude = tuple(e.strip() for e in (settings["exclude"] or "").split(",") if e.strip())
    return Quantization(mode, settings["calibration"], exclude, max_drop=settings["max_drop"] / 100)


def _speed_lines(outcome: Any) -> list[str]:
    """What the written file buys in ONNX Runtime here, and the INT8 comparison when there is one."""
    lines = []
    found = outcome.details.get("quantization")
    if found is not None:
        rows = [[r["model"], r["latency_ms"], f"{r['speedup']:.2f}x", format_bytes(r["bytes"]), percent(r["agreement"]),
                 None if r["cosine"] is None else f"{r['cosine']:.4f}"] for r in found["rows"]]
        lines.append(table(["model", "median ms", "speed-up", "size", "agree %", "cosine"], rows,
                           title=f"INT8 ({found['provider']}, batch {found['batch']}; fidelity to the input model on "
                                 f"{found['measured_on']}): wrote {found['kept']}, {found['reason']}"))
    speed = outcome.speed
    if speed is not None:
        lines.append(f"in ONNX Runtime ({speed['provider']}, batch {speed['batch']}): {speed['output_ms']:.3g} ms "
                     f"against {speed['input_ms']:.3g} ms for the input file, {speed['speedup']:.2f}x"
                     + (f"; {speed['note']}" if "note" in speed else ""))
    return lines


def _unread(read: dict[str, Any], *sources: Any) -> None:
    """Source flags given without any source to read are refused, not ignored."""
    from onnxprune.errors import ConfigError

    defaults = {"text_field": "text", "padding": "longest"}
    given = [name for name, value in read.items() if value is not None and value != defaults.get(name)]
    if given and not any(sources):
        raise ConfigError(f"--{given[0].replace('_', '-')} says how to read --calib/--data, and neither is given")


def _recovery_lines(details: dict[str, Any]) -> list[str]:
    """What recovery did, one line (none when it did not run)."""
    found = details.get("recovery")
    if found is None:
        return []
    return [f"recovery: {found['steps']} steps in {found['seconds']:.1f} s, held-out error {found['error_before']:.4g} "
            f"-> {found['error_after']:.4g} on {found['holdout_samples']} samples ({found['note']})"]


def _quality_lines(quality: Any, data: Any) -> list[str]:
    """The written model against the input model on --data, one line (and the note of what is missing)."""
    if quality is None:
        return []
    figures = [f"{name} {value:.2%}" for name, value in (("accuracy", quality.accuracy),
                                                          ("top-1 agreement", quality.agreement)) if value is not None]
    figures.append(f"cosine {quality.cosine:.4f}")
    return [f"on {getattr(data, 'path', data)} ({quality.samples} samples), against the input model: "
            f"{', '.join(figures)}"]


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Pruned model to write.")
@click.option("-m", "--method", default="magnitude", show_default=True, help="See `onnxprune methods`.")
@click.option("-s", "--sparsity", type=float, default=None, help="Fraction to remove, in [0, 1) (default 0.5).")
@click.option("--calib", help="Calibration data: .npz/.npy, an image folder/glob/list, a .txt/.jsonl text file or "
              "a reader file.py:factory.")
@_INPUT_SHAPE
@click.option("--report", type=click.Path(dir_okay=False), help="Write the outcome as JSON here.")
@click.option("--compress", is_flag=True, help="Store sparse weights as sparse initializers (smaller file).")
@click.option("--onnxslim", "use_onnxslim", is_flag=True, help="Simplify the graph with onnxslim first.")
@click.option("--allocation", help="global | uniform sparsity allocation (unstructured methods).")
@click.option("--pattern", help="N:M semi-structured pattern, e.g. 2:4 (unstructured methods).")
@click.option("--max-memory", help="Memory budget, e.g. 2G (chita, chita++, sparsegpt, wanda).")
@click.option("--rows", type=int, help="Rows of the second-order matrix (chita, channel methods).")
@click.option("--group", type=int, help="Prune only this channel group (structured methods).")
@click.option("--round-to", type=int, help="Keep channel counts multiples of this (structured methods).")
@click.option("--importance", help="Channel importance: l1 | l2 | taylor | random (structured methods).")
@click.option("--skip-first", is_flag=True, default=None, help="Leave the first prunable layer dense.")
@click.option("--skip-last", is_flag=True, default=None, help="Leave the last prunable layer dense.")
@click.option("--seed", type=int, help="Random seed (default 0).")
@click.option("-O", "--option", "extra", multiple=True, metavar="KEY=VALUE", help="Any other method option.")
@click.option("--data", help="Evaluation data (any source, like --calib): the written model is measured against the "
              "input model on it (accuracy with labels, fidelity); needed by budgets.")
@click.option("--max-accuracy-drop", type=float, help="Budget, in accuracy points on --data: the highest sparsity "
              "within it, or with a target a guard that refuses a model that breaks it.")
@click.option("--min-agreement", type=float, help="Budget, in percent top-1 agreement with the input model on "
              "--data (no labels needed); like --max-accuracy-drop.")
@click.option("--target-speedup", type=float, help="Target: choose each channel group's width so that ORT runs the "
              "model this many times faster (channel methods; instead of --sparsity).")
@click.option("--target-macs", type=float, help="Target: choose each channel group's width so that this fraction of "
              "the MACs is left, e.g. 0.5 (channel methods; instead of --sparsity).")
@click.option("--target-batch", type=int, help="Batch the --target-speedup is timed at [default: 8, or the model's "
              "fixed batch].")
@click.option("--target-table", type=click.Path(dir_okay=False), help="Reuse the latency table of an earlier "
              "--target-speedup run's --report (same model, batch and machine) instead of timing it again.")
@_resume_option
@_RAY
@_stage_options
@_source_options
@_shared
def prune(model: str, output: str, method: str, calib: str | None, input_shape: tuple[str, ...], report: str | None,
          compress: bool, use_onnxslim: bool, extra: tuple[str, ...], data: str | None,
          max_accuracy_drop: float | None, min_agreement: float | None, target_speedup: float | None,
          target_macs: float | None, target_batch: int | None, target_table: str | None, **flags: Any) -> None:
    """Prune MODEL with a method and write the result to OUTPUT (never overwriting MODEL): at one sparsity, to a
    target (per-group channel widths) or at the highest sparsity within an accuracy budget."""
    recovery = _recovery(flags, seed=flags.get("seed") or 0)
    quantize = _quantization(flags)
    read = {name: flags.pop(name) for name in _SOURCE_FLAGS}
    calib, data = _source(calib, read), _source(data, read)
    _unread(read, calib, data)
    resume, ray_address = flags.pop("resume"), flags.pop("ray_address")
    options = {k: v for k, v in flags.items() if v is not None}
    options.update(_parse_options(extra))
    common = dict(calib=calib, report=report, compress=compress, use_onnxslim=use_onnxslim,
                  input_shapes=_shapes(input_shape), recover=recovery, quantize=quantize, resume=resume,
                  ray_address=ray_address)
    budget = None
    if max_accuracy_drop is not None or min_agreement is not None:
        from onnxprune.errors import ConfigError
        from onnxprune.workflows.budget import Budget

        if max_accuracy_drop is not None and not 0 <= max_accuracy_drop < 100:
            raise ConfigError(f"--max-accuracy-drop is in accuracy points, in [0, 100); got {max_accuracy_drop}")
        if min_agreement is not None and not 1 < min_agreement <= 100:
            raise ConfigError(f"--min-agreement is a percentage in (1, 100] (99 is 99 %); got {min_agreement}")
        budget = Budget(None if max_accuracy_drop is None else max_accuracy_drop / 100,
                        None if min_agreement is None else min_agreement / 100)
    if any(v is not None for v in (target_speedup, target_macs, target_batch, target_table)):
        from onnxprune.workflows.target import Target

        _target_prune(model, output, method, Target(target_speedup, target_macs, target_batch, target_table),
                      common, data, budget, options)
    elif budget is not None:
        _budget_search(model, output, method, budget, common, data, options)
    else:
        from onnxprune.pipeline import prune as run_prune

        outcome = run_prune(model, output, method, data=data, **common, **options)
        b, a = outcome.before, outcome.after
        rows = [["parameters", b.params, a.params], ["prunable sparsity", f"{b.sparsity:.1%}", f"{a.sparsity:.1%}"],
                ["MACs / sample", b.macs if b.macs is not None else "unknown",
                 a.macs if a.macs is not None else "unknown"],
                ["MACs skipping zeros", b.sparse_macs, a.sparse_macs],
                ["file size", format_bytes(b.file_bytes), format_bytes(a.file_bytes)]]
        text = "\n".join([f"wrote {outcome.output} ({method}, sparsity {outcome.config['sparsity']})",
                          table(["", "before", "after"], rows), *_recovery_lines(outcome.details), *_speed_lines(outcome),
                          *_quality_lines(outcome.quality, data),
                          "time: " + ", ".join(f"{k} {v:.1f}s" for k, v in outcome.timings.items())])
        _emit(outcome.to_dict(), text)


def _target_prune(model: str, output: str, method: str, target: Any, common: dict[str, Any], data: Any,
                  budget: Any, options: dict[str, Any]) -> None:
    """``prune`` to a target: per-group widths, the table of each group's width and error, the measured figure,
    the fidelity on the calibration hold-out and, with a budget, its verdict on --data."""
    from onnxprune.workflows.target import prune_to_target

    outcome = prune_to_target(model, output, method, target, data=data, budget=budget, **common, **options)
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
             f"{fmt(outcome.before.params)} -> {fmt(outcome.after.params)}"]
    held = found.get("holdout")
    if held is not None:
        agreement = "" if held["agreement"] is None else f", top-1 agreement {held['agreement']:.2%}"
        lines.append(f"fidelity to the input model on {held['samples']} held-out calibration samples: cosine "
                     f"{held['cosine']:.4f}{agreement}")
    else:
        lines.append("fidelity on a calibration hold-out: none (too few calibration samples, or no --calib)")
    lines += _recovery_lines(outcome.details) + _speed_lines(outcome) + _quality_lines(outcome.quality, data)
    if "budget" in found:
        lines.append(f"budget on {data.path}: {found['budget']['text']}")
    lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in outcome.timings.items()))
    _emit(outcome.to_dict(), "\n".join(lines))


def _budget_search(model: str, output: str, method: str, budget: Any, common: dict[str, Any], data: Any,
                   options: dict[str, Any]) -> None:
    """``prune`` with a budget: bisect the sparsity, write the best model within budget."""
    from onnxprune.errors import ConfigError
    from onnxprune.workflows.budget import search_sparsity

    if data is None:
        raise ConfigError("a budget search needs evaluation data: pass --data DATA.npz")
    result = search_sparsity(model, output, method, budget, data=data, **common, **options)
    rows = [[f"{t.sparsity:.4f}", percent(t.accuracy), percent(t.agreement), "yes" if t.within else "no",
             t.error or ""] for t in sorted(result.trials, key=lambda t: t.sparsity)]
    lines = [table(["sparsity", "acc %", "agree %", "within budget", "error"], rows, title="trials")]
    if result.sparsity is None:
        lines.append("no sparsity in the search range stays within the budget; nothing was written")
    else:
        lines.append(f"wrote {output}: {method} at sparsity {result.sparsity:.4f} (accuracy "
                     f"{fmt(percent(result.accuracy))} %, dense {fmt(percent(result.dense_accuracy))} %, agreement "
                     f"{fmt(percent(result.agreement))} %)")
    _emit(result.to_dict(), "\n".join(lines))
    if result.sparsity is None:
        sys.exit(3)


@cli.command(name="eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Evaluation data (any source, like prune's --calib).")
@click.option("--reference", type=click.Path(dir_okay=False), help="Reference model for fidelity figures.")
@click.option("--batch-size", default=256, show_default=True, type=int)
@click.option("--threads", type=int, help="ORT intra-op threads [default: onnxprune --threads].")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--iou-threshold", default=0.5, show_default=True, type=float,
              help="Threshold for the IoU of outputs that are maps in [0, 1].")
@_source_options
@_shared
def eval_command(model: str, data: str, reference: str | None, batch_size: int, threads: int | None,
                 device: str, iou_threshold: float, **read: Any) -> None:
    """Accuracy (with labels) and fidelity of every output to a reference, measured in ONNX Runtime:
    agreement for class scores, IoU for maps in [0, 1], cosine and relative L2 for all."""
    from onnxprune.validate.evaluation import evaluate

    result = evaluate(model, _source(data, read), reference=reference, batch_size=batch_size, threads=threads, device=device,
                      iou_threshold=iou_threshold)
    rows = [["samples", result.samples], ["provider", result.provider], ["seconds", result.seconds],
            ["accuracy %", percent(result.accuracy)]]
    text = table(["metric", "value"], [r for r in rows if r[1] is not None], title=f"{model} on {data}")
    if result.outputs:
        text += "\n" + table(["output", "shape", "kind", "agree %", f"IoU@{iou_threshold:g}", "cosine", "rel L2",
                              "max |diff|"],
                             [[o.name, "x".join(map(str, o.shape)), o.kind, percent(o.agreement), o.iou,
                               f"{o.cosine:.4f}", f"{o.rel_l2:.4g}", f"{o.max_abs_diff:.4g}"] for o in result.outputs],
                             title=f"fidelity to {reference}")
    if result.note:
        text += f"\nnote: {result.note}"
    _emit(result.to_dict(), text)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--vs", type=click.Path(dir_okay=False), help="Second model, timed interleaved (ABAB).")
@click.option("--batch", default=1, show_default=True, type=int)
@click.option("--threads", type=int, help="ORT intra-op threads [default: onnxprune --threads].")
@click.option("--runs", default=100, show_default=True, type=int, help="Timed runs (>= 50).")
@click.option("--warmup", default=10, show_default=True, type=int)
@click.option("--data", help="Take inputs from this data source (any source, like prune's --calib).")
@_INPUT_SHAPE
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@_source_options
@_shared
def bench(model: str, vs: str | None, batch: int, threads: int | None, runs: int, warmup: int,
          data: str | None, input_shape: tuple[str, ...], device: str, **read: Any) -> None:
    """Latency (median, p90) in ONNX Runtime; with --vs, the speed-up of MODEL over OTHER."""
    from onnxprune.validate.bench import benchmark

    source = _source(data, read)
    _unread(read, source)
    r = benchmark(model, vs=vs, batch=batch, threads=threads, runs=runs, warmup=warmup, device=device, data=source,
                  input_shapes=_shapes(input_shape))
    rows = [[r.model, r.median_ms, r.p90_ms]] + ([[r.vs, r.vs_median_ms, r.vs_p90_ms]] if r.vs else [])
    text = table(["model", "median ms", "p90 ms"], rows,
                 title=f"{r.provider} provider, batch {r.batch}, {r.threads} threads, {r.runs} runs")
    if r.ratio is not None:
        text += f"\nspeed-up of {r.model} over {r.vs}: {r.ratio:.2f}x"
    _emit(r.to_dict(), text)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--out-dir", required=True, type=click.Path(file_okay=False), help="Folder for models and reports.")
@click.option("--data", required=True, help="Evaluation data (any source, like prune's --calib).")
@click.option("--calib", help="Calibration data for methods that need it (any source).")
@click.option("--methods", "method_list", help="Comma-separated methods [default: magnitude,chita++,l1-channel,"
              "intrafusion].")
@click.option("--sparsities", help="Comma-separated sparsities [default: 0.3,0.5,0.7,0.9].")
@click.option("--batch", default=32, show_default=True, type=int, help="Batch size for latency.")
@click.option("--threads", type=int, help="ORT intra-op threads [default: onnxprune --threads].")
@click.option("--runs", default=50, show_default=True, type=int, help="Timed runs per model (>= 50).")
@click.option("-O", "--option", "extra", multiple=True, metavar="[METHOD.]KEY=VALUE",
              help="Method option for every swept method that has it (round_to=8), or for one (chita++.stages=5).")
@_resume_option
@_RAY
@_stage_options
@_source_options
@_shared
def sweep(model: str, out_dir: str, data: str, calib: str | None, method_list: str | None,
          sparsities: str | None, batch: int, threads: int | None, runs: int, extra: tuple[str, ...],
          resume: str | None, ray_address: str | None, **read: Any) -> None:
    """Prune MODEL with every method × sparsity, measure each in ORT, write reports and plots."""
    from onnxprune.workflows.sweeps import DEFAULT_METHODS, DEFAULT_SPARSITIES, parse_list, sweep_table, sweep as run_sweep

    recovery, quantize = _recovery(read, seed=0), _quantization(read)
    report = run_sweep(model, out_dir, data=_source(data, read), calib=_source(calib, read),
                       methods=parse_list(method_list) if method_list else DEFAULT_METHODS,
                       sparsities=parse_list(sparsities, float) if sparsities else DEFAULT_SPARSITIES,
                       batch=batch, threads=threads, runs=runs, options=_parse_options(extra),
                       command="onnxprune " + " ".join(sys.argv[1:]), recover=recovery, quantize=quantize,
                       resume=resume, ray_address=ray_address)
    _emit(report.to_dict(), sweep_table(report))


@cli.command(name="calib")
@click.argument("source")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="The model the data is for: its inputs decide names, shapes and dtypes.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .npz to write.")
@_source_options
@_shared
def calib_command(source: str, model_path: str, output: str, **read: Any) -> None:
    """Write the .npz that a data SOURCE gives for MODEL (to inspect and reuse), with a summary table."""
    from onnxprune.data import load_data, summary, write_npz
    from onnxprune.graph.io import check_output_path, load_model

    check_output_path(output, [model_path])
    data = load_data(_source(source, read), load_model(model_path), "calibration")
    written = write_npz(data, output)
    rows = summary(data)
    text = table(["input", "samples", "shape", "dtype", "min", "mean", "max", "padding %"],
                 [[r["input"], r["samples"], "x".join(map(str, r["shape"])), r["dtype"], f"{r['min']:.4g}",
                   f"{r['mean']:.4g}", f"{r['max']:.4g}", percent(r["padding"])] for r in rows],
                 title=f"wrote {written} from {source}")
    if data.source and data.source.get("preprocess"):
        text += f"\npreprocess: {data.source['preprocess']}"
    _emit({"output": str(written), "source": data.source, "inputs": rows}, text)


@cli.command()
@_shared
def methods() -> None:
    """The pruning methods, and every option once: its meaning and each method's default."""
    from onnxprune.methods import method_catalogue

    catalogue = method_catalogue()
    rows = [[m["name"], m["kind"], "yes" if m["needs_calib"] else "no", m["summary"]] for m in catalogue["methods"]]
    lines = [table(["method", "kind", "needs data", "what"], rows), "",
             "options (set with -O name=value or the flag of the same name; defaults per method):"]
    for option in catalogue["options"]:
        defaults = ", ".join(f"{method} {value!r}" for method, value in option["defaults"].items())
        lines.append(f"  {option['name']}: {option['meaning']}")
        lines.append(f"      default: {defaults}")
    renamed = catalogue["renamed"]
    if renamed:
        lines += ["", "renamed (the old names still work in this release, with a warning): "
                  + ", ".join(f"{old} -> {new}" for old, new in renamed.items())]
    lines += ["", "what a session keeps between sparsities (sweep, budget search, Pruner.write):"]
    lines += [f"  {m['name']}: {m['reuse']}" for m in catalogue["methods"]]
    lines += ["", "resumable (--resume DIR keeps finished layers): "
              + ", ".join(m["name"] for m in catalogue["methods"] if m["resumable"])]
    _emit(catalogue, "\n".join(lines))


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), help="Keep the pruned models in this folder.")
@_shared
def demo(out: str | None) -> None:
    """The whole pipeline on the bundled CNN with every method: prune, eval, bench, one table."""
    from onnxprune.workflows.demo import run_demo

    result = run_demo(out)
    _emit(result.to_dict(), result.text())


def main() -> None:
    """Console-script entry point; sets how idle OpenMP threads wait before torch loads (``threads.choose_waits``)."""
    from onnxprune.threads import choose_waits

    choose_waits()
    warnings.showwarning = lambda message, *args, **kwargs: click.echo(f"warning: {message}", err=True)
    cli(prog_name="onnxprune")


if __name__ == "__main__":
    main()
