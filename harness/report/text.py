"""The test-text section: per arm, the paired difference's standard errors from the seeds and from
the test text, the interval over both, the floor the test set puts on what any number of seeds can
detect, and the units where the arm's difference is largest (harness.stats.text does the
arithmetic; the units are the final evaluation's, harness.data.batches.evaluation_units); their
markdown, JSON, terminal lines and Methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.report.cells import interval, labelled, md_escape, md_table, num
from harness.report.section import WITHHELD, Section, SweepData, SweepReport
from harness.stats.text import MIN_SEEDS, run_text_se, signal_to_noise, split_uncertainty, unit_means
from harness.store.record import unpack_units

COLUMNS = ["arm", "seeds", "diff", "se_seed", "se_text", "se", "df", "low", "high", "floor", "text_share",
           "dominant", "seeds_for_text_to_dominate", "note"]
UNIT_COLUMNS = ["unit", "first_token", "last_token", "share", "diff", "se_seed"]
TOP_UNITS = 3  # units shown each way per arm: a short table, not a ranking to trust
NOT_DETECTED = "not detected"  # a test-text part (se_text) whose unbiased estimate fell to zero or below


@dataclass
class TextReport:
    units: str  # what a unit is, as the runs recorded it
    n_units: int
    table: pd.DataFrame  # COLUMNS, one row per compared arm
    helps: dict[str, pd.DataFrame] = field(default_factory=dict)  # arm -> the units where it lowers loss most
    hurts: dict[str, pd.DataFrame] = field(default_factory=dict)  # arm -> the units where it raises loss most
    run_text_se: float = math.nan  # median over runs: one run's test loss's SE over test texts
    seed_sd: float = math.nan  # pooled within-arm sd of one run's test loss over seeds
    snr: float = math.nan  # Heineman et al.'s signal-to-noise: arms' spread / seed sd
    snr_text: float = math.nan  # the same signal over one run's test-text SE
    note: str = ""  # what is missing

    def dominance(self) -> str:
        """One sentence: which source of uncertainty dominates this sweep's differences."""
        rows = self.table[np.isfinite(self.table["se"].astype(float))]
        if rows.empty:
            return ""
        text = list(rows.loc[rows["dominant"].eq("test text"), "arm"])
        if not text:
            detected = rows.loc[rows["se_text"].astype(float) > 0, "floor"]
            floor = (f"(at most {detected.max():.4g} nats)" if len(detected) else
                     f"({NOT_DETECTED}: the test text's part estimated at zero for every arm)")
            return f"The seeds dominate for every arm: more seeds narrow the intervals, down to the test set's floor {floor}."
        if len(text) == len(rows):
            return ("The test text dominates for every arm: more seeds will barely narrow the intervals; a larger "
                    "test set would.")
        return (f"The test text dominates for {', '.join(text)} (more seeds barely narrow those intervals; a larger "
                "test set would); the seeds dominate for the others.")


def _unit_table(order, mean, se, spans, weights) -> pd.DataFrame:
    return pd.DataFrame([{"unit": int(u), "first_token": int(spans[u][0]), "last_token": int(spans[u][1]),
                          "share": float(weights[u]), "diff": float(mean[u]), "se_seed": float(se[u])}
                         for u in order], columns=UNIT_COLUMNS)


def build_text(done: pd.DataFrame, baseline: str, alpha: float) -> TextReport | None:
    """The section for one sweep's completed runs at its own budget (one row per arm and seed), or
    None when no run has per-unit sums and nothing needs saying."""
    if done.empty:
        return None
    have = {}
    for r in done.itertuples():  # the store's loading gives every row every column of the run record
        packed = unpack_units(r.unit_loss_sums, r.unit_tokens)
        if packed is not None:
            have[r.run_id] = packed
    missing = len(done) - len(have)
    lacking = (f"{missing} of {len(done)} completed runs have no per-unit test sums (recorded before harness kept "
               "them); they are left out here" if missing else "")
    if not have:
        return TextReport(units="", n_units=0, table=pd.DataFrame(columns=COLUMNS),
                          note="no run has per-unit test sums (runs imported from elsewhere, or recorded before harness kept "
                               "them): the test text's uncertainty cannot be shown; new runs keep them")
    with_units = done[done["run_id"].isin(have)]
    tokens0 = np.asarray(have[with_units["run_id"].iloc[0]][1], dtype=float)
    if any(not np.array_equal(np.asarray(have[i][1], dtype=float), tokens0) for i in with_units["run_id"]):
        return TextReport(units="", n_units=0, table=pd.DataFrame(columns=COLUMNS),
                          note="the runs' test units differ (another test set or unit rule): not compared")
    kinds = with_units["test_units"].astype(str).unique()
    means, weights = unit_means(np.vstack([have[i][0] for i in with_units["run_id"]]), tokens0)
    loss = dict(zip(with_units["run_id"], means))
    ends = np.cumsum(tokens0).astype(int)  # a unit's targets are consecutive positions of the split
    spans = [(int(e - t) + 1, int(e)) for e, t in zip(ends, tokens0)]
    per_arm = {arm: {int(r.seed): loss[r.run_id] for r in g.itertuples()} for arm, g in with_units.groupby("arm")}

    base = per_arm.get(baseline, {})
    rows, helps, hurts = [], {}, {}
    for arm, seeds in sorted(per_arm.items()):
        if arm == baseline:
            continue
        shared = sorted(set(seeds) & set(base))
        row = {"arm": arm, "seeds": len(shared), "note": ""}
        if len(shared) < MIN_SEEDS:
            rows.append({**row, "note": f"needs {MIN_SEEDS} seeds shared with the baseline with per-unit sums "
                                        f"(has {len(shared)})"})
            continue
        D = np.vstack([seeds[s] - base[s] for s in shared])
        try:
            split = split_uncertainty(D, weights, alpha)
        except ValueError as e:
            rows.append({**row, "note": f"not split: {e}"})
            continue
        rows.append({**row, "diff": split.diff, "se_seed": split.se_seed, "se_text": split.se_text, "se": split.se,
                     "df": split.df, "low": split.low, "high": split.high, "floor": split.floor,
                     "text_share": split.text_share, "dominant": split.dominant,
                     "seeds_for_text_to_dominate": split.seeds_for_text_to_dominate()})
        mean, se = D.mean(axis=0), D.std(axis=0, ddof=1) / math.sqrt(len(shared))
        order = np.argsort(mean, kind="stable")
        helps[arm] = _unit_table(order[:TOP_UNITS], mean, se, spans, weights)
        hurts[arm] = _unit_table(order[::-1][:TOP_UNITS], mean, se, spans, weights)
    report = TextReport(units=", ".join(kinds), n_units=len(tokens0), table=pd.DataFrame(rows, columns=COLUMNS),
                        helps=helps, hurts=hurts, note=lacking)
    report.run_text_se = float(np.median([run_text_se(v, weights) for v in loss.values()]))
    test_loss = with_units.groupby("arm")["test_loss"]
    var, dof = test_loss.var(ddof=1).fillna(0.0), test_loss.count() - 1
    report.seed_sd = float(math.sqrt((var * dof).sum() / dof.sum())) if dof.sum() > 0 else math.nan
    report.snr = signal_to_noise(test_loss.mean().to_numpy(), report.seed_sd)
    report.snr_text = signal_to_noise(test_loss.mean().to_numpy(), report.run_text_se)
    return report


# =========================================================================== the section


METHOD = (
    "- test text: the final evaluation sums its token losses per test unit (a document; consecutive documents "
    "grouped into 1,024 units where there are more; 64 blocks of consecutive tokens where the split holds fewer "
    "than 32 documents). Per arm, the paired per-unit differences D[seed, unit] (the same units for arm and "
    "baseline) are split by the method of moments of a two-way crossed random-effects model, with each unit "
    "weighted by its share of the test tokens: the seed variance (as the paired t), the unit-clustered variance "
    "of the seed means, and the seed-by-unit interaction; the test text's part is the clustered variance less the "
    "interaction's, and the interval over both uses Satterthwaite's degrees of freedom (3 seeds at least; each "
    "part's unbiasedness and the interval's coverage are checked by simulation). Blocks inside a few long "
    "documents sample the text within them, not the documents: with four plays, another four plays could differ "
    "more. Signal-to-noise after Heineman et al. (2025): the spread of the arms' mean test losses over the pooled "
    "seed sd of one run.")

def build(data: SweepData) -> TextReport | None:
    if not data.has_baseline:
        return None
    text = build_text(data.done, data.baseline, data.options.alpha)
    if text is not None and data.withheld and len(text.table):  # its intervals compare with the baseline
        text.table.loc[text.table["arm"].isin(data.withheld), "note"] = WITHHELD
    return text


def _text_part(value: float, se_text: float) -> str:
    """An SE or floor from the test text; zero is an estimate truncated at zero, not a measured zero."""
    return NOT_DETECTED if se_text == 0 else num(value)


def text_line(r, confidence: str) -> str:
    """One arm's seeds-and-text uncertainty, as the report and the terminal say it."""
    if r.note:
        return f"{r.arm}: {r.note}"
    return (f"{r.arm}: diff {num(r.diff, sign=True)}, SE seeds {num(r.se_seed)}, SE test text "
            f"{_text_part(r.se_text, r.se_text)}; {confidence} CI over both {interval(r.low, r.high)}; floor "
            f"{_text_part(r.floor, r.se_text)}; {r.dominant} dominate" + ("" if r.dominant == "seeds" else "s"))


def markdown(rep: SweepReport, hh: str) -> list[str]:
    """How much of each difference's uncertainty another test sample would bring."""
    x = rep.text
    if x is None:
        return []
    out = [f"{hh} The test set is a sample too", ""]
    if x.n_units:
        out += [f"The final evaluation keeps its loss per test unit: {md_escape(x.units)}. The seed SE is what another "
                "set of seeds would do on this test set (the intervals above); the test-text SE what another test "
                "sample of this size would do, however many seeds; the interval covers both (two-way crossed "
                "seeds x units, see Methods). The floor is the smallest difference this test set can detect at "
                "any number of seeds (2.8 test-text SEs: two-sided 5%, 80% power). Where the test text's part "
                "estimates at zero or below (the units differ no more than the seeds' noise explains), it reads "
                f"'{NOT_DETECTED}'.", ""]
    if x.note:
        out += [f"> {md_escape(x.note)}", ""]
    if len(x.table):
        ci = rep.options.confidence
        rows = [[md_escape(r.arm), str(r.seeds), num(r.diff, sign=True), num(r.se_seed),
                 _text_part(r.se_text, r.se_text), num(r.se), interval(r.low, r.high), _text_part(r.floor, r.se_text),
                 f"{r.dominant} ({100 * r.text_share:.0f}% text)" if not r.note else md_escape(r.note)]
                for r in x.table.itertuples()]
        out.append(md_table(["arm", "seeds", "diff", "SE seeds", "SE test text", "SE both", f"{ci} CI (seeds and "
                             "texts)", "floor", "dominant source"], rows, "lrrrrrrrl"))
        out.append("")
        sentence = x.dominance()
        if sentence:
            out += [sentence, ""]
    if np.isfinite(x.snr):
        out += [f"Signal-to-noise (Heineman et al. 2025): the arms' mean test losses span {num(x.snr * x.seed_sd)} "
                f"nats against a seed sd of one run of {num(x.seed_sd)}: SNR {x.snr:.3g}; against one run's "
                f"test-text SE ({num(x.run_text_se)}), {x.snr_text:.3g}.", ""]
    for arm in x.helps:
        out += [f"Where {md_escape(arm)} helps and hurts most (the units with the largest mean paired differences; "
                "each is a few seeds on a small piece of text, so expect some of these to be noise: the SE column "
                "says how much):", ""]
        table = pd.concat([x.helps[arm].assign(side="helps most"),
                           x.hurts[arm].assign(side=np.where(x.hurts[arm]["diff"] > 0, "hurts", "helps least"))])
        out.append(md_table(["", "unit", "test-split positions", "share", "diff", "SE (seeds)"],
                            [[u.side, str(u.unit), f"{u.first_token:,}-{u.last_token:,}", f"{100 * u.share:.2f}%",
                              num(u.diff, sign=True), num(u.se_seed)] for u in table.itertuples()], "lrrrrr"))
        out.append("")
    return out


def to_json(rep: SweepReport) -> dict:
    x = rep.text
    return {"test_text": None if x is None else {
        "units": x.units, "n_units": x.n_units, "note": x.note,
        "arms": x.table.to_dict(orient="records"), "dominance": x.dominance(),
        "signal_to_noise": {"snr_seeds": x.snr, "snr_test_text": x.snr_text,
                            "seed_sd": x.seed_sd, "run_test_text_se": x.run_text_se},
        "units_where_it_helps": {a: df.to_dict(orient="records") for a, df in x.helps.items()},
        "units_where_it_hurts": {a: df.to_dict(orient="records") for a, df in x.hurts.items()}}}


def terminal(rep: SweepReport) -> list[str]:
    x = rep.text
    return [] if x is None else labelled("test text", [x.note] + [text_line(r, rep.options.confidence)
                                                                  for r in x.table.itertuples()])


SECTION = Section("text", build, markdown, to_json, terminal, lambda rep: [METHOD])
