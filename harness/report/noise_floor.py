"""The noise-floor section: how much the baseline's test loss varies across seeds, and what an
unpaired comparison could detect at that noise (harness.stats.inference.noise_floor). Its text
ends with pairing's one sentence, so it reads the pairing section's part."""

from __future__ import annotations

from harness.report.cells import md_escape, md_table, num, seed_count
from harness.report.pairing import pairing_sentence
from harness.report.section import Section, SweepData, SweepReport
from harness.stats.inference import noise_floor


def build(data: SweepData) -> dict:
    o = data.options
    return noise_floor(data.done.loc[data.done["arm"].eq(data.baseline), "test_loss"].to_numpy(), o.alpha, o.power)


def markdown(rep: SweepReport, hh: str) -> list[str]:
    nf, o = rep.noise, rep.options
    out = [f"{hh} Noise floor", ""]
    if nf["n"] >= 2 and nf["note"] is None:
        out.append(f"The baseline's test loss varies across seeds with sd {num(nf['sd'])} "
                   f"(n = {nf['n']}, standard error of the mean {num(nf['sem'])}). With "
                   f"{nf['n']} seeds per arm, an unpaired comparison detects a difference of "
                   f"{num(nf['mdd_two_sample'])} with {o.power:.0%} power at alpha {o.alpha:g}; "
                   "paired seeds usually do better (see the per-arm figures above).")
        out.append("")
        out.append(md_table(["true difference", "seeds per arm (unpaired, at the baseline sd)"],
                            [[f"{k:g}", seed_count(v)] for k, v in nf["seeds_needed"].items()], "rr"))
    else:
        out.append(f"Not computable: {md_escape(nf['note'] or 'no baseline runs')}; a noise "
                   "floor needs at least 2 completed baseline runs with different losses.")
    out.append("")
    if len(rep.pairing):
        out += [pairing_sentence(rep.pairing), ""]
    out.append(f"`harness sweep {md_escape(rep.baseline)} --seeds N` runs the baseline alone "
               "N times: its spread answers \"is it noise?\" directly.")
    out.append("")
    return out


def to_json(rep: SweepReport) -> dict:
    nf = rep.noise
    return {"noise_floor": {**{k: v for k, v in nf.items() if k != "seeds_needed"},
                            "seeds_needed": [{"diff": k, "seeds_per_arm": v} for k, v in nf["seeds_needed"].items()]}}


SECTION = Section("noise_floor", build, markdown, to_json)
