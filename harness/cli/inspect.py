"""The commands that read or describe: `harness list`, `chinchilla`, `status`, `report`, `export`,
`generate`, `bench`, and `data prepare`. As in harness.cli.runs, a command's parameters are its
options and its body calls the library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from harness.cli.app import (PresetOpt, ResultsOpt, SetOpt, SweepsOpt, a_destination, a_path, command, console, data_app,
                             definitions, parse_sets, positive)
from harness.core import config as cfgmod
from harness.core.errors import UserError


@command("list")
def list_cmd(keys: Annotated[bool, typer.Option("--keys", help="Also list every config key and its default.")] = False,
             sweeps_dirs: SweepsOpt = None):
    """Presets, interventions and sweep files, each with where it comes from (built-in or your folders)."""
    library = definitions(sweeps_dirs)

    def origin(d) -> str:
        hidden = ", ".join(f.label for f in d.shadows)
        return d.folder.label + (f"; shadows {hidden}" if hidden else "")

    table = Table(title="presets", show_lines=False)
    for col in ("preset", "description", "from"):
        table.add_column(col, style="bold" if col == "preset" else None, overflow="fold")
    for d in library.listing("preset"):
        table.add_row(d.name, escape(cfgmod.load_preset(d.name, library).description), escape(origin(d)))
    console.print(table)
    table = Table(title="interventions (combine with '+', e.g. qkv_bias+no_dropout)")
    for col in ("intervention", "sets", "description", "from"):
        table.add_column(col, style="bold" if col == "intervention" else None, overflow="fold")
    for d in library.listing("intervention"):
        iv = cfgmod.load_intervention(d.name, library)
        sets = [f"{k}={v}" for k, v in iv.overrides.items()]
        if iv.code:  # a code intervention: its file, seams and settings (with this TOML's values)
            values = iv.code.entry(iv.settings)["settings"]
            sets.append(f"code {iv.code.path.name} ({', '.join(iv.code.seams)})"
                        + "".join(f"; {k}={values[k]!r}: {doc}" for k, (_, doc) in iv.code.settings.items()))
        table.add_row(d.name, escape(", ".join(sets) or "-"), escape(iv.description), escape(origin(d)))
    console.print(table)
    files = library.listing("sweep file")
    if files:
        table = Table(title="sweep files (harness sweep NAME.toml)")
        for col in ("sweep file", "from"):
            table.add_column(col, style="bold" if col == "sweep file" else None, overflow="fold")
        for d in files:
            table.add_row(f"{d.name}.toml", escape(origin(d)))
        console.print(table)
    if keys:
        table = Table(title=escape("config keys (--set KEY=VALUE, or [set] in an intervention TOML)"))
        for col in ("key", "group", "default", "meaning"):
            table.add_column(col)
        for name, group, default, doc in cfgmod.config_keys():
            placement = " (placement: not part of a run's identity)" if name in cfgmod.PLACEMENT_KEYS else ""
            table.add_row(name, group, repr(default), escape(doc + placement))
        console.print(table)


@command("chinchilla")
def chinchilla_cmd(
    arms: Annotated[Optional[list[str]], typer.Argument(help="Arms (interventions, '+' to combine); default: baseline.")] = None,
    preset: PresetOpt = "gpt2-small",
    nproc: Annotated[int, typer.Option(help="Processes (GPUs) per node.")] = 8,
    nnodes: Annotated[int, typer.Option(help="Nodes.")] = 1,
    tokens_per_param: Annotated[Optional[float], typer.Option(help="Tokens per parameter (default: the preset's, 20).")] = None,
    sets: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
    sweeps_dirs: SweepsOpt = None,
):
    """Chinchilla token budgets: tokens-per-param x params, rounded UP to whole global batches."""
    from harness.planning.budget import chinchilla
    library = definitions(sweeps_dirs)
    positive(nproc, "--nproc")
    positive(nnodes, "--nnodes")
    overrides = parse_sets(sets)
    if tokens_per_param is not None:
        overrides["tokens_per_param"] = cfgmod.coerce("tokens_per_param", float(tokens_per_param), "--tokens-per-param")
    rows = [chinchilla(cfgmod.resolve(preset, arm, overrides, library), nproc * nnodes).as_dict()
            for arm in (arms or [cfgmod.BASELINE])]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Chinchilla budgets: preset {preset}, {nproc * nnodes} process(es)")
    for col in ("arm", "params", "non-embedding", "raw tokens", "tokens", "steps", "tokens/step"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for r in rows:
        table.add_row(r["arm"], f"{r['params']:,}", f"{r['non_embedding_params']:,}", f"{r['raw_tokens']:,}",
                      f"{r['tokens']:,}", f"{r['steps']:,}", f"{r['tokens_per_step']:,}")
    console.print(table)


# one parameter per command-line option (Typer)
@command("prepare", data_app)
def data_prepare_cmd(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        help="Local files or folders: JSON lines (.jsonl/.json), Parquet (.parquet) or text (.txt/.md, one "
             "document per file), all of one kind.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (train.bin, test.bin, manifest.json).", parser=a_path,
                                                show_default=False)] = None,
    hf: Annotated[Optional[str], typer.Option("--hf", help="A Hugging Face dataset id, streamed through the "
                                              "`datasets` library, e.g. HuggingFaceFW/fineweb.")] = None,
    hf_name: Annotated[Optional[str], typer.Option("--name", help="The dataset's configuration, e.g. sample-10BT.")] = None,
    split: Annotated[str, typer.Option(help="The dataset split to read.")] = "train",
    revision: Annotated[Optional[str], typer.Option(help="A dataset revision (commit, tag or branch) to pin.")] = None,
    text_field: Annotated[str, typer.Option("--field", help="The record field that holds each document's text.")] = "text",
    tokenizer: Annotated[str, typer.Option(help="Tokenizer: gpt2 or bytes (must match the preset's).")] = "gpt2",
    test_tokens: Annotated[int, typer.Option(help="Held-out test tokens: the first whole documents up to at least this.")] = 19_660_800,
    train_tokens: Annotated[Optional[int], typer.Option(help="Stop after this many train tokens (whole documents; default: all).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace what --out holds instead of resuming it.")] = False,
):
    """Tokenize a dataset into uint16 shards with a held-out test set; resumable (run it again)."""
    from harness.data.prepare import Source, prepare

    if out is None:
        raise UserError("give the output folder with --out DIR")
    if hf and paths:
        raise UserError("give local files (PATH...) or --hf NAME, not both")
    if hf:
        source = Source.hub(hf, hf_name, split, revision, text_field)
    else:
        if hf_name or revision:
            raise UserError("--name and --revision belong to --hf NAME")
        source = Source.local(list(paths or []), text_field)
    try:
        prepare(source, out, tokenizer, test_tokens, train_tokens, overwrite=overwrite, console=console)
    except KeyboardInterrupt:
        return 130
    console.print(f"train on it with: harness sweep ARMS --data {out} (tokenizer {tokenizer})", highlight=False)
    return 0


@command("export")
def export_cmd(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix, or the run's folder).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.", parser=a_path)],
    fmt: Annotated[str, typer.Option("--format", help="'hf': a Hugging Face transformers GPT-2 folder.")] = "hf",
    results: ResultsOpt = Path("results"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace what --out holds.")] = False,
    check: Annotated[Optional[bool], typer.Option(
        "--check/--no-check", help="Load the export with transformers and compare logits (default: when "
                                   "transformers is installed).")] = None,
):
    """Export a run's checkpoint so transformers' GPT2LMHeadModel loads it."""
    from harness.training.export import export_run, locate_run

    ref = locate_run(run, results)
    record = export_run(ref, out, fmt, overwrite=overwrite, check=check)
    step, planned = record["checkpoint_step"], record["planned_steps"]
    console.print(f"exported run {ref.run_id} (arm {record['arm']}, seed {record['seed']}, step {step:,}) to {out}",
                  highlight=False)
    if planned and step is not None and step < planned:
        console.print(f"note: the run has not finished: this is its checkpoint at step {step:,} of {planned:,}",
                      highlight=False)
    if record["max_abs_logit_diff"] is not None:
        console.print(f"checked: GPT2LMHeadModel reproduces harness's logits (max abs difference "
                      f"{record['max_abs_logit_diff']:.2e})", highlight=False)
    else:
        console.print("not checked (transformers is not installed: pip install 'harness[hf]')", highlight=False,
                      markup=False)
    console.print(f"load it with: transformers.GPT2LMHeadModel.from_pretrained({str(out)!r})", highlight=False)


@command("generate")
def generate_cmd(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix, or the run's folder).")],
    prompt: Annotated[str, typer.Argument(help="Text to continue.")] = "Every effort moves you",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 40,
    temperature: Annotated[float, typer.Option(help="Softmax temperature; 0 = greedy (argmax).")] = 0.0,
    top_k: Annotated[Optional[int], typer.Option(help="Sample only among the k most likely tokens.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed (sample k uses seed + k).")] = 123,
    samples: Annotated[int, typer.Option(help="How many continuations.")] = 1,
    stop_at_eot: Annotated[bool, typer.Option("--stop-at-eot/--no-stop-at-eot", help="Stop at <|endoftext|>.")] = True,
    results: ResultsOpt = Path("results"),
):
    """Sample text from a run's checkpoint (the book's generate: temperature, top-k, seed)."""
    from harness.training.export import locate_run
    from harness.training.generate import sample

    texts = sample(locate_run(run, results), prompt, max_new_tokens, temperature, top_k, seed, samples, stop_at_eot)
    for k, text in enumerate(texts):
        if samples > 1:
            print(f"--- sample {k + 1} (seed {seed + k})")
        print(text)


@command("status")
def status_cmd(
    results: ResultsOpt = Path("results"),
    sweep: Annotated[Optional[str], typer.Option(help="Only this sweep (default: every sweep in the results folder).")] = None,
    runs: Annotated[bool, typer.Option("--runs", help="Also list every run with its state and detail.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
):
    """Runs done, running, queued, failed and diverged, per arm of each sweep."""
    from harness.store.outputs import require_folder
    from harness.report.status import print_status, status_payload, sweep_names

    require_folder(results)
    if sweep is not None and sweep not in sweep_names(results):
        known = ", ".join(sweep_names(results)) or "none"
        raise UserError(f"no sweep {sweep!r} in {results} (sweeps there: {known})")
    payload = status_payload(results, sweep)
    if as_json:
        print(json.dumps(payload, indent=2, default=str))
        return 0
    if not payload:
        console.print(f"no sweeps in {results} yet", highlight=False)
        return 0
    print_status(payload, console, show_runs=runs)
    return 0


@command("report")
def report_cmd(
    results: ResultsOpt = Path("results"),
    sweep: Annotated[Optional[str], typer.Option(help="Report only this sweep (default: every sweep in the store).")] = None,
    baseline: Annotated[str, typer.Option(help="The arm every other arm is compared with.")] = cfgmod.BASELINE,
    alpha: Annotated[float, typer.Option(help="Significance level, after Holm's correction across arms.")] = 0.05,
    margin: Annotated[Optional[float], typer.Option(
        help="Equivalence margin in test loss: TOST declares 'equivalent' when the difference is within +-margin.")] = None,
    out: Annotated[Optional[str], typer.Option(help="Markdown file, or folder (one that exists, or ending in /), to "
                                               "write (default: reports/<sweep>.md).", parser=a_destination)] = None,
    fmt: Annotated[str, typer.Option("--format", help="markdown (file + terminal table) or json (stdout).")] = "markdown",
    allow_mismatch: Annotated[bool, typer.Option(
        "--allow-mismatch", help="Compare arms whose budgets, presets or test sets differ (stated in the report).")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw the forest, curve and paired plots.")] = True,
):
    """Confidence intervals and significance tests of every arm against the baseline."""
    from harness.report.build import run_report

    run_report(results, sweep, baseline=baseline, alpha=alpha, margin=margin, out=out, fmt=fmt,
               allow_mismatch=allow_mismatch, console=console, plots=plots)


@command("bench")
def bench_cmd(
    preset: PresetOpt = "gpt2-small",
    arm: Annotated[str, typer.Option("--arm", help="Arm to time: an intervention, or several joined by '+'.")] = cfgmod.BASELINE,
    sets: SetOpt = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed warm-up steps (and eval batches) first.")] = 5,
    steps: Annotated[int, typer.Option("--steps", help="Timed training steps (and eval batches).")] = 30,
    compare_book: Annotated[bool, typer.Option(
        "--compare-book", help="Also time the book's implementation of the same config, interleaved with ours.")] = False,
    no_compile: Annotated[bool, typer.Option("--no-compile", help="Do not torch.compile (default: the preset's compile setting).")] = False,
    results: ResultsOpt = Path("results"),
    sweeps_dirs: SweepsOpt = None,
):
    """Tokens/s, step time, MFU and peak memory of the real training step and of evaluation."""
    from harness.training.bench import run_bench

    run_bench(preset, arm, parse_sets(sets), library=definitions(sweeps_dirs), warmup=warmup, steps=steps, compare_book=compare_book,
              compile=False if no_compile else None, results=results,
              say=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))
