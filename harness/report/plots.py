"""The report's plots, drawn from a built SweepReport (matplotlib's Agg canvas, no display needed).

forest: each arm's difference from the baseline with its interval; curves: held-out loss (or, for
runs without held-out points, training loss) mean and sd across seeds; effect: the paired
difference of held-out loss along training with pointwise intervals; paired: per-seed test loss,
baseline to arm. Nothing here computes a statistic.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.stats import inference as stats
from harness.report.section import SweepReport
from harness.store.record import COMPLETED, ordinary_budget

MAX_PLOT_ARMS = 12  # arms besides the baseline in the curve and paired plots


VERDICT_COLOURS = {
    stats.BETTER: "#1a9850", stats.WORSE: "#d73027", stats.EQUIVALENT: "#4575b4",
    stats.NO_DIFFERENCE: "#636363", stats.INSUFFICIENT: "#bdbdbd",
}


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _short(name: str, n: int = 40) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def plot_arms(rep: SweepReport) -> tuple[list[str], int]:
    """Arms (besides the baseline) shown in the curve and paired plots: all of them, or the
    MAX_PLOT_ARMS with the smallest Holm p-values (then by name) when there are more.
    Returns (arms, number of arms left out)."""
    t = rep.table[rep.table["arm"] != rep.baseline]
    if len(t) <= MAX_PLOT_ARMS:
        return list(t["arm"]), 0
    key = t.assign(_p=t["p_holm"].astype(float).fillna(np.inf)).sort_values(["_p", "arm"])
    keep = set(key["arm"].iloc[:MAX_PLOT_ARMS])
    return [a for a in t["arm"] if a in keep], len(t) - MAX_PLOT_ARMS


def plot_forest(rep: SweepReport, path: Path) -> bool:
    margin = rep.options.margin
    t = rep.table[rep.table["arm"] != rep.baseline]
    t = t[np.isfinite(t["diff"].astype(float))]
    if t.empty:
        return False
    fig = _figure(7.5, 1.2 + 0.35 * len(t))
    ax = fig.add_subplot()
    y = np.arange(len(t))[::-1]
    for yi, r in zip(y, t.itertuples()):
        col = VERDICT_COLOURS.get(r.verdict, "#636363")
        if np.isfinite(r.ci_low) and np.isfinite(r.ci_high):
            ax.plot([r.ci_low, r.ci_high], [yi, yi], color=col, lw=2)
        ax.plot([r.diff], [yi], "o", color=col)
    ax.axvline(0.0, color="black", lw=0.8)
    if margin:
        ax.axvspan(-margin, margin, color="#4575b4", alpha=0.1, lw=0)
    ax.set_yticks(y, [_short(a) for a in t["arm"]])
    ax.set_xlabel(f"test loss difference vs {_short(rep.baseline, 20)} with "
                  f"{rep.options.confidence} t interval (negative = better)")
    ax.set_title(f"{_short(rep.sweep)}: differences from the baseline")
    width_in, height_in = fig.get_size_inches()
    label_in = 0.25 + 0.075 * max(len(_short(a)) for a in t["arm"])
    fig.subplots_adjust(left=min(0.6, label_in / width_in), right=0.97,
                        bottom=min(0.45, 0.55 / height_in), top=1 - min(0.3, 0.35 / height_in))
    fig.savefig(path, pil_kwargs={"compress_level": 1})
    return True


def aggregate_curves(outcomes: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd of the training loss across seeds per (sweep, arm, tokens), completed runs."""
    cols = ["sweep", "arm", "tokens", "mean", "std"]
    done = ordinary_budget(outcomes[outcomes["outcome"].eq(COMPLETED)])
    if curves.empty or done.empty:
        return pd.DataFrame(columns=cols)
    # Attempts of one run share its run_id: match the curve of the attempt that counts.
    keys = ["run_id"]
    if curves["attempt"].notna().any() and done["attempt"].notna().any():
        keys.append("attempt")
    c = curves.merge(done[keys + ["sweep", "arm"]], on=keys, how="inner")
    c = c[np.isfinite(c["train_loss"]) & np.isfinite(c["tokens"])]
    if c.empty:
        return pd.DataFrame(columns=cols)
    return (c.groupby(["sweep", "arm", "tokens"], sort=True)["train_loss"]
            .agg(["mean", "std"]).reset_index())


def plot_curves(rep: SweepReport, curve_agg: pd.DataFrame, path: Path, ylabel: str = "train loss") -> bool:
    agg = curve_agg[curve_agg["sweep"].eq(rep.sweep)]
    agg = agg[agg["arm"].isin([rep.baseline, *plot_arms(rep)[0]])]
    if agg.empty:
        return False
    import matplotlib

    fig = _figure(11, 4.5)
    ax_full, ax_tail = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    n_arms = agg["arm"].nunique()
    cmap = matplotlib.colormaps["tab10" if n_arms <= 10 else "tab20"]
    x_max = float(agg["tokens"].max())
    x_min = float(agg["tokens"].min())
    tail_from = x_min + 0.5 * (x_max - x_min)
    tail_lo, tail_hi = np.inf, -np.inf
    groups = dict(tuple(agg.groupby("arm", sort=False)))
    shown, _ = plot_arms(rep)
    order = [a for a in [rep.baseline, *shown] if a in groups]
    if not order:
        return False
    for i, arm in enumerate(order):
        g = groups[arm]
        col = cmap(i % cmap.N)
        x = g["tokens"].to_numpy()
        m, s = g["mean"].to_numpy(), g["std"].fillna(0).to_numpy()
        for ax in (ax_full, ax_tail):
            ax.plot(x, m, color=col, lw=1.2, label=_short(arm, 30))
            ax.fill_between(x, m - s, m + s, color=col, alpha=0.2, lw=0)
        tail = x >= tail_from
        if tail.any():
            tail_lo = min(tail_lo, float(np.min(m[tail] - s[tail])))
            tail_hi = max(tail_hi, float(np.max(m[tail] + s[tail])))
    pos = agg["mean"][agg["mean"] > 0]
    if len(pos) and pos.max() / max(pos.min(), 1e-12) > 1.5:
        from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

        ax_full.set_yscale("log")
        # Plain tick labels: the default log labels go through mathtext, which is slow.
        ax_full.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        ax_full.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax_full.yaxis.set_minor_formatter(NullFormatter())
    if x_max > tail_from and np.isfinite(tail_lo) and tail_hi > tail_lo:
        pad = 0.05 * (tail_hi - tail_lo)
        ax_tail.set_xlim(tail_from, x_max)
        ax_tail.set_ylim(tail_lo - pad, tail_hi + pad)
    for ax in (ax_full, ax_tail):
        ax.set_xlabel("tokens")
    ax_full.set_ylabel(f"{ylabel} (mean ± 1 sd across seeds)")
    ax_full.set_title("whole run", fontsize=9)
    ax_tail.set_title("second half (zoom)", fontsize=9)
    ax_tail.legend(fontsize=7, ncol=2 if n_arms > 8 else 1)
    fig.suptitle(f"{_short(rep.sweep)}: loss curves of completed runs", fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.88, wspace=0.18)
    fig.savefig(path, pil_kwargs={"compress_level": 1})
    return True


def heldout_agg(rep: SweepReport) -> pd.DataFrame:
    """The held-out loss per arm as plot_curves draws it (mean and sd across seeds per tokens)."""
    h = rep.worth.heldout if rep.worth is not None else pd.DataFrame()
    if h.empty:
        return pd.DataFrame(columns=["sweep", "arm", "tokens", "mean", "std"])
    return h.rename(columns={"sd": "std"}).assign(sweep=rep.sweep)[["sweep", "arm", "tokens", "mean", "std"]]


def plot_effect(rep: SweepReport, path: Path) -> bool:
    """Each arm's paired difference arm - baseline of held-out loss against tokens, with its
    pointwise interval (each point's own t interval)."""
    paired = {a: d for a, d in (rep.worth.paired if rep.worth is not None else {}).items()
              if a in plot_arms(rep)[0] and len(d)}
    if not paired:
        return False
    import matplotlib

    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["tab10" if len(paired) <= 10 else "tab20"]
    for i, (arm, d) in enumerate(paired.items()):
        col = cmap((i + 1) % cmap.N)
        ax.plot(d["tokens"], d["mean"], color=col, lw=1.3, marker=".", label=_short(arm, 30))
        ax.fill_between(d["tokens"], d["low"], d["high"], color=col, alpha=0.18, lw=0)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("tokens (log scale)")
    ax.set_ylabel("held-out loss, arm - baseline")
    ax.set_title(f"{_short(rep.sweep)}: the effect along training, paired by seed "
                 f"({rep.options.confidence} pointwise t intervals)", fontsize=9)
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.13, top=0.9)
    fig.savefig(path, pil_kwargs={"compress_level": 1})
    return True


def plot_paired(rep: SweepReport, outcomes: pd.DataFrame, path: Path) -> bool:
    from matplotlib.collections import LineCollection

    done = ordinary_budget(outcomes[outcomes["sweep"].eq(rep.sweep) & outcomes["outcome"].eq(COMPLETED)])
    base = done[done["arm"].eq(rep.baseline)].set_index("seed")["test_loss"]
    arms, _ = plot_arms(rep)
    if base.empty or not arms:
        return False
    ncol = min(4, len(arms))
    nrow = math.ceil(len(arms) / ncol)
    fig = _figure(2.6 * ncol + 0.5, 2.6 * nrow + 0.6)
    for i, arm in enumerate(arms):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        a = done[done["arm"].eq(arm)].set_index("seed")["test_loss"]
        common = base.index.intersection(a.index)
        if len(common):
            b_, a_ = base.loc[common].to_numpy(), a.loc[common].to_numpy()
            segs = np.stack([np.column_stack([np.zeros_like(b_), b_]),
                             np.column_stack([np.ones_like(a_), a_])], axis=1)
            cols = np.where(a_ < b_, "#1a9850", "#d73027")
            ax.add_collection(LineCollection(segs, colors=cols, alpha=0.5, lw=0.8))
            ax.plot([0, 1], [b_.mean(), a_.mean()], color="black", lw=2)
        lone_b = base.drop(common)
        lone_a = a.drop(common)
        if len(lone_b) or len(lone_a):
            ax.plot(np.zeros(len(lone_b)), lone_b, ".", color="grey", ms=3)
            ax.plot(np.ones(len(lone_a)), lone_a, ".", color="grey", ms=3)
        ax.set_xlim(-0.2, 1.2)
        ax.autoscale(axis="y")
        ax.set_xticks([0, 1], [_short(rep.baseline, 12), _short(arm, 12)], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(_short(arm, 28), fontsize=8)
    fig.suptitle(f"{_short(rep.sweep)}: test loss per seed, baseline -> arm "
                 "(green = arm lower)", fontsize=9)
    w_in, h_in = fig.get_size_inches()
    fig.subplots_adjust(left=0.5 / w_in, right=1 - 0.1 / w_in, bottom=0.35 / h_in,
                        top=1 - 0.55 / h_in, wspace=0.45, hspace=0.45)
    fig.savefig(path, pil_kwargs={"compress_level": 1})
    return True


def make_plots(rep: SweepReport, outcomes, curve_agg, md_dir: Path, stem: str) -> None:
    targets = {"forest": md_dir / f"{stem}_forest.png", "curves": md_dir / f"{stem}_curves.png",
               "effect": md_dir / f"{stem}_effect.png", "paired": md_dir / f"{stem}_paired.png"}
    heldout = heldout_agg(rep)
    made = {
        "forest": plot_forest(rep, targets["forest"]) if rep.has_baseline
        else False,
        "curves": plot_curves(rep, heldout, targets["curves"], "held-out loss") if len(heldout)
        else plot_curves(rep, curve_agg, targets["curves"]),
        "effect": plot_effect(rep, targets["effect"]) if rep.has_baseline else False,
        "paired": plot_paired(rep, outcomes, targets["paired"]) if rep.has_baseline else False,
    }
    rep.plots = {k: targets[k] for k, ok in made.items() if ok}


def plot_noise(rep, path: Path) -> bool:
    """Per-source sd of the test loss with its interval, for the baseline (and the arm, and their
    paired difference)."""
    from harness.stats.noise import LABELS, SOURCES

    series = {f"{name}": t.set_index("source") for name, t in rep.components.items()}
    if rep.paired is not None and len(rep.paired):
        series[f"{rep.arm} - {rep.baseline} (paired)"] = rep.paired.set_index("source").rename(columns={"sd_diff": "sd"})
    order = [s for s in (*SOURCES, "", "replicate") if any(s in t.index for t in series.values())]
    if not order:
        return False
    fig = _figure(8, 1.4 + 0.5 * len(order))
    ax = fig.add_subplot()
    y = np.arange(len(order))[::-1].astype(float)
    width = 0.8 / len(series)
    for k, (label, t) in enumerate(series.items()):
        pos = y + 0.4 - width * (k + 0.5)
        sd = np.array([t.loc[s, "sd"] if s in t.index else np.nan for s in order], dtype=float)
        lo = np.array([t.loc[s, "low"] if s in t.index else np.nan for s in order], dtype=float)
        hi = np.array([t.loc[s, "high"] if s in t.index else np.nan for s in order], dtype=float)
        ax.errorbar(sd, pos, xerr=[np.nan_to_num(sd - lo), np.nan_to_num(hi - sd)], fmt="o", capsize=3,
                    label=_short(label, 40))
    ax.set_yticks(y, [LABELS[s] for s in order])
    ax.set_xlabel("sd of the test loss across runs, with 95% chi-square interval")
    ax.set_xlim(left=0)
    ax.legend(fontsize=8)
    ax.set_title(f"{_short(rep.sweep)}: where the seed noise comes from")
    fig.subplots_adjust(left=0.3, right=0.97, bottom=0.16, top=0.88)
    fig.savefig(path, pil_kwargs={"compress_level": 1})
    return True


def plot_ladder(rep, path: Path) -> bool:
    """Each arm's difference per rung against parameters (log scale) with its interval, the fitted
    line and the prediction at the target with its interval."""
    t = rep.table[np.isfinite(rep.table["diff"].astype(float))]
    if t.empty:
        return False
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot()
    trends = rep.trends.set_index("arm")
    for i, arm in enumerate(rep.arms):
        own = t[t["arm"].eq(arm)]
        if own.empty:
            continue
        col = f"C{i % 10}"
        shift = 1 + 0.03 * (i - (len(rep.arms) - 1) / 2)  # side by side at one size
        x = own["params"].to_numpy(float) * shift
        ax.errorbar(x, own["diff"], yerr=[own["diff"] - own["low"], own["high"] - own["diff"]], fmt="o", color=col,
                    capsize=3, label=_short(arm, 30))
        tr = trends.loc[arm] if arm in trends.index else None
        if tr is not None and np.isfinite(tr.get("slope", np.nan)):
            lo, hi = rep.measured
            xs = np.geomspace(min(lo, rep.target_params), max(hi, rep.target_params), 50)
            ax.errorbar([rep.target_params * shift], [tr["prediction"]],
                        yerr=[[tr["prediction"] - tr["prediction_low"]], [tr["prediction_high"] - tr["prediction"]]],
                        fmt="s", color=col, mfc="white", capsize=4)
            small = own["params"].min()
            base_fit = tr["prediction"] - tr["slope"] * math.log2(rep.target_params / small)
            ax.plot(xs, base_fit + tr["slope"] * np.log2(xs / small), color=col, lw=1, ls="--")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"parameters (square: predicted at {_short(rep.target, 24)})")
    ax.set_ylabel(f"test loss difference vs baseline ({rep.options.confidence})")
    ax.set_title(f"{_short(rep.ladder)}: effect against size")
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.92)
    fig.savefig(path, pil_kwargs={"compress_level": 1})
    return True
