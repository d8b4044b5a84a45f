"""Hostile input, property-based: arbitrary --set items, intervention and sweep TOML files, CLI
argument lists and Parquet content end in a correct result or one clear error, never a traceback;
arm names are escaped in markdown reports."""

from __future__ import annotations

import io
import json
import math
import re
import string
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from rich.console import Console
from markdown_it import MarkdownIt
from typer.testing import CliRunner

from harness.core import config as cfgmod
from harness.core.errors import UserError
from harness.store.results import RUN_SCHEMA, ResultsStore

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
KEYS = sorted(cfgmod.ALL_KEYS)
HOSTILE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
NASTY = st.sampled_from(["", " ", "nan", "inf", "-inf", "1e400", "-0", "0", "-1", "9" * 30, "true", "[1, 2]",
                         "{a = 1}", '"x"', "'''", "\x00", "../../etc/passwd", "a|b*c_d[e](f)<g>", "\n", "=", "1_000"])


# ----------------------------------------------------------------------------- --set KEY=VALUE


@FAST
@given(st.one_of(HOSTILE_TEXT, st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.one_of(NASTY, HOSTILE_TEXT))))
@example("lr=nan")
@example("tokens_per_param=inf")
@example("emb_dim=" + "9" * 30)
def test_parse_set_returns_a_typed_value_or_a_user_error(item):
    try:
        key, value = cfgmod.parse_set(item)
    except UserError as err:
        assert str(err).strip()  # (it may quote the item, newlines and all)
        return
    assert key in cfgmod.ALL_KEYS
    kind = cfgmod.FIELD_TYPES[key]
    if kind in (int, float, bool, str):
        assert isinstance(value, kind)


# ----------------------------------------------------------------------------- TOML files

def toml_value():
    scalars = st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(lambda f: "nan" if math.isnan(f) else
                                                           ("inf" if f == math.inf else "-inf" if f == -math.inf else repr(f))),
        st.booleans().map(lambda b: "true" if b else "false"),
        HOSTILE_TEXT.map(json.dumps),
        st.sampled_from(["1979-05-27T07:32:00Z", "07:32:00", "1979-05-27"]),
    )
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(st.sampled_from(KEYS + ["x", "name"]), inner, max_size=3).map(
            lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}")), max_leaves=6)


def toml_doc(top_keys):
    """A TOML document: top-level keys (some from the real schema), then maybe a [set] table."""
    line = st.tuples(st.sampled_from(top_keys), toml_value()).map(lambda kv: f"{kv[0]} = {kv[1]}")
    set_line = st.tuples(st.sampled_from(KEYS + ["bogus", "lr "]), toml_value()).map(lambda kv: f"{kv[0]} = {kv[1]}")
    structured = st.tuples(st.lists(line, max_size=5, unique_by=lambda s: s.split(" =")[0]),
                           st.one_of(st.none(), st.lists(set_line, max_size=5, unique_by=lambda s: s.split(" =")[0]))
                           ).map(lambda t: "\n".join(t[0]) + ("\n[set]\n" + "\n".join(t[1]) if t[1] is not None else "") + "\n")
    return st.one_of(structured, HOSTILE_TEXT, st.binary(max_size=60).map(lambda b: b.decode("latin-1")))


@FAST
@given(toml_doc(["description", "source", "set", "name", "x"]))
@example('[set]\nlr = nan\n')
@example('[set]\nemb_dim = 99999999999999999\n')
@example('set = 3\n')
def test_intervention_files_load_or_fail_cleanly(tmp_path, monkeypatch, text):
    (tmp_path / "interventions").mkdir(exist_ok=True)
    monkeypatch.setenv("HARNESS_SWEEPS", str(tmp_path))
    (tmp_path / "interventions" / "hostile.toml").write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        iv = cfgmod.load_intervention("hostile")
        arm = cfgmod.resolve("micro", "hostile")
    except UserError as err:
        assert str(err)
        return
    assert set(iv.overrides) <= cfgmod.ALL_KEYS and arm.arm == "hostile"


SWEEP_KEYS = ["name", "description", "preset", "arms", "seeds", "seed_list", "budget", "tokens", "set", "bogus"]


@FAST
@given(toml_doc(SWEEP_KEYS))
@example('arms = ["qkv_bias"]\nseed_list = ["a", "b"]\n')
@example('arms = ["qkv_bias"]\nseed_list = [1.5]\n')
@example('arms = ["qkv_bias"]\nname = "../../escape"\n')
@example('arms = ["qkv_bias"]\ntokens = -5\n')
@example('arms = ["qkv_bias"]\nseeds = 0\n')
def test_sweep_files_load_or_fail_cleanly(tmp_path, text):
    from harness.planning.request import load_sweep_file

    path = tmp_path / "hostile.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        data = load_sweep_file(path)
    except UserError as err:
        assert str(path) in str(err) or "sweep file" in str(err)
        return
    assert isinstance(data["arms"], list) and data["arms"]


# ----------------------------------------------------------------------------- the CLI, in process

runner = CliRunner()


def invoke(args: list[str]):
    from harness.cli import app

    return runner.invoke(app, args, catch_exceptions=True)


def assert_clean(result, args):
    """Exit 0/1/2 (click's usage errors are 2 too) and no uncaught exception."""
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), (args, repr(exc), result.output[-2000:])
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output[-2000:])
    assert "Traceback" not in result.output, (args, result.output[-2000:])


def cli_args(tmp: Path):
    """Argument lists for the read-only or dry-run commands (nothing here trains)."""
    value = st.one_of(NASTY, HOSTILE_TEXT.filter(lambda s: not s.startswith("-")), st.integers(-5, 10**12).map(str))
    sets = st.lists(st.builds(lambda k, v: ["--set", f"{k}={v}"], st.sampled_from(KEYS + ["nope"]), value),
                    max_size=2).map(lambda xs: sum(xs, []))
    arms = st.lists(st.one_of(st.sampled_from(cfgmod.intervention_names() + ["rope+nope", "qkv_bias+", "+", ""]),
                              HOSTILE_TEXT.filter(lambda s: not s.startswith("-"))), max_size=2)
    presets = st.sampled_from(["micro", "tiny", "gpt2-small", "nope", ""])
    results = ["--results", str(tmp / "results")]
    return st.one_of(
        st.builds(lambda a, p, s, n: ["chinchilla", *a, "--preset", p, "--nproc", n, *s], arms, presets, sets,
                  st.sampled_from(["1", "0", "-3", "x", "8"])),
        st.builds(lambda a, p, s, seeds, extra: ["sweep", *(a or ["qkv_bias"]), "--preset", p, *s, *seeds, *extra,
                                                  "--dry-run", *results],
                  arms, presets, sets,
                  st.sampled_from([[], ["--seeds", "0"], ["--seeds", "-1"], ["--seed-list", "1,x"],
                                   ["--seed-list", ",,"], ["--seeds", "3"]]),
                  st.sampled_from([[], ["--tokens", "10"], ["--tokens", "-1"], ["--budget", "nope"],
                                   ["--retries", "-1"], ["--nproc", "0"], ["--nnodes", "2"], ["--name", "a/b"]])),
        st.builds(lambda s: ["status", *s, *results], st.sampled_from([[], ["--json"], ["--sweep", "nope"]])),
        st.builds(lambda s: ["report", *s, *results], st.sampled_from([[], ["--format", "json"], ["--alpha", "2"]])),
        st.builds(lambda r: ["export", r, "--out", str(tmp / "out"), *results], HOSTILE_TEXT.filter(lambda s: not s.startswith("-"))),
        st.builds(lambda r: ["generate", r, *results], HOSTILE_TEXT.filter(lambda s: not s.startswith("-"))),
        st.lists(st.one_of(NASTY, HOSTILE_TEXT), max_size=4),
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(st.data())
def test_cli_never_shows_a_traceback(tmp_path, data):
    args = data.draw(cli_args(tmp_path))
    assume(not any(a in ("data", "prepare") for a in args[:1]))
    assert_clean(invoke(args), args)


@pytest.mark.parametrize("args", [
    ["chinchilla", "--set", "emb_dim=99999999999999999999"],
    ["chinchilla", "--set", "tokens_per_param=nan"],
    ["chinchilla", "--set", "tokens_per_param=inf"],
    ["chinchilla", "--preset", "micro", "--set", "lr=nan"],
    ["run", "--preset", "micro", "--seed", "-1"],
    ["sweep", "qkv_bias", "--seed-list", "1,-2", "--dry-run"],
    ["list", "--keys"],
])
def test_cli_edge_cases_are_clean(tmp_path, args):
    assert_clean(invoke([*args, *(["--results", str(tmp_path)] if args[0] in ("run", "sweep") else [])]), args)


# ----------------------------------------------------------------------------- Parquet content

def hostile_frame():
    """A runs table with the real column names (some missing, some retyped) and nasty values."""
    column_values = {
        "string": st.lists(st.one_of(st.none(), HOSTILE_TEXT), min_size=1, max_size=4),
        "int": st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=1, max_size=4),
        "float": st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), min_size=1, max_size=4),
    }

    @st.composite
    def frame(draw):
        n = draw(st.integers(1, 4))
        cols = {}
        names = draw(st.lists(st.sampled_from(RUN_SCHEMA.names + ["extra"]), min_size=1, max_size=12, unique=True))
        for name in names:
            kind = draw(st.sampled_from(sorted(column_values)))
            values = draw(column_values[kind])
            cols[name] = (values * n)[:n]
        if draw(st.booleans()):  # keep the report's required columns most of the time
            for name, default in (("sweep", "s"), ("arm", "baseline"), ("seed", 0), ("status", "completed"),
                                  ("test_loss", 5.0)):
                cols.setdefault(name, [default] * n)
        return pd.DataFrame(cols)

    return frame()


@FAST
@given(hostile_frame())
def test_arbitrary_parquet_never_crashes_the_store_or_the_report(tmp_path, frame):
    from harness.report.build import run_report

    root = tmp_path / "results"
    root.mkdir(exist_ok=True)
    for p in root.iterdir():
        if p.is_file():
            p.unlink()
    try:
        frame.to_parquet(root / "runs.parquet", index=False)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        assume(False)
    said: list[str] = []
    table = ResultsStore(root, warn=said.append).runs()  # a correct table, or empty with a warning
    assert table.schema == RUN_SCHEMA
    assert table.num_rows in (0, len(frame))
    assert table.num_rows or said
    # the report reads whatever file is there now (the original or the store's rebuilt one)
    for fmt in ("json", "markdown"):
        try:
            run_report(root, fmt=fmt, console=Console(file=io.StringIO()), reports_dir=tmp_path / "rep",
                       plots=False, stdout=io.StringIO(), n_resamples=0)
        except UserError as err:
            assert str(err)


ARM_NAMES = st.text(alphabet=string.printable + "äß‮", min_size=1, max_size=20).filter(lambda s: s.strip())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(st.lists(ARM_NAMES, min_size=1, max_size=3, unique=True), ARM_NAMES)
@example(["a|b", "<script>alert(1)</script>"], "*bold*_x_[l](http://e)")
def test_arm_and_sweep_names_are_escaped_in_markdown(tmp_path, arms, sweep):
    from harness.report.build import run_report

    assume("baseline" not in arms)
    rows = []
    for i, arm in enumerate(["baseline", *arms]):
        for seed in range(3):
            rows.append({"run_id": f"r{i}-{seed}", "attempt": 1, "sweep": sweep, "arm": arm, "seed": seed,
                         "status": "completed", "test_loss": 5.0 + 0.01 * i + 0.001 * seed, "planned_tokens": 3072,
                         "preset": "micro", "test_set_id": "t", "config_hash": f"h{i}"})
    root = tmp_path / "results"
    root.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / "runs.parquet", index=False)
    out = tmp_path / "report.md"
    run_report(root, fmt="markdown", out=out, console=Console(file=io.StringIO()), plots=False,
               stdout=io.StringIO(), n_resamples=0)
    text = out.read_text()
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    cells, rows, shown = 0, [], []
    for tok in tokens:  # every row of every table has exactly its header's number of cells
        if tok.type == "tr_open":
            cells = 0
        elif tok.type in ("th_open", "td_open"):
            cells += 1
        elif tok.type == "tr_close":
            rows.append(cells)
        elif tok.type == "thead_open":
            rows = []
        elif tok.type == "table_close":
            assert len(set(rows)) == 1, rows
        elif tok.type == "inline":
            shown.append("".join(c.content for c in tok.children or [] if c.type in ("text", "code_inline")))
        assert tok.type not in ("html_block", "html_inline"), tok
    rendered = " ".join(re.sub(r"\s+", " ", t) for t in shown)
    for name in [*arms, sweep]:  # shown literally: markup in a name never becomes markup
        assert re.sub(r"\s+", " ", name).strip() in rendered, name


@pytest.mark.parametrize("body", [
    'arms = ["qkv_bias"]\nseed_list = ["a", "b"]\n',
    'arms = ["qkv_bias"]\nseed_list = [1.5, 2]\n',
    'arms = ["qkv_bias"]\nseed_list = [-1]\n',
    'arms = ["qkv_bias"]\nseed_list = []\n',
    'arms = ["qkv_bias"]\nseeds = -4\n',
    'arms = ["qkv_bias"]\ntokens = -5\n',
    'arms = ["qkv_bias"]\nname = "../../escape"\n',
    'arms = ["qkv_bias"]\nname = "a/b"\n',
    'arms = ["qkv_bias"]\nname = ""\n',
    'arms = ["qkv_bias"]\npreset = "../presets/micro"\n',
    'arms = ["../interventions/qkv_bias"]\n',
    'arms = ["qkv_bias"]\n[set]\nlr = "fast"\n',
    'arms = ["qkv_bias"]\n[set]\ndrop_rate = 1.5\n',
    'arms = ["qkv_bias"]\nset = 5\n',
    'arms = [1, 2]\n',
    '\x00\x01',
])
def test_hostile_sweep_files_through_the_cli(tmp_path, body):
    path = tmp_path / "hostile.toml"
    path.write_text(body)
    result = invoke(["sweep", str(path), "--preset", "micro", "--dry-run", "--results", str(tmp_path / "r")])
    assert_clean(result, body)
    assert not list(tmp_path.parent.glob("escape*")), "a sweep name wrote outside the results folder"
