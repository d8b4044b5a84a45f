"""A sweep's plan on disk: RESULTS/sweeps/<sweep>.json (what it will run; how an adaptive sweep
decides), read by `harness status` and the report, and <sweep>.jobs.json (run id -> Slurm or local
job id); a ladder's rungs in RESULTS/ladders/<name>.json. JSON only: reading a plan never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness.core.definitions import BASELINE
from harness.core.files import atomic_write_json

PLANS = "sweeps"


def plan_path(results: Path, sweep: str) -> Path:
    return Path(results) / PLANS / f"{sweep}.json"


def jobs_path(results: Path, sweep: str) -> Path:
    return Path(results) / PLANS / f"{sweep}.jobs.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


NOISE, ADAPTIVE, FIXED = "noise study", "adaptive sweep", "sweep"
ARTICLES = {NOISE: "a noise study", ADAPTIVE: "an adaptive sweep", FIXED: "a sweep of fixed seeds"}
ADAPTIVE_SETTINGS = ("alpha", "margin", "min_seeds", "max_seeds")


def plan_record(plan) -> dict[str, Any]:
    """The plan as saved: what the sweep (a harness.planning.plan.Plan) intends to run, so status can
    show what is queued, how an adaptive sweep decides, and what each arm computes (so that a later
    command under the same name is checked against it: check_saved)."""
    from harness.core.scheme import experiment

    first = {}
    for s in plan.specs:
        first.setdefault(s.arm, s)
    return {
        "sweep": plan.sweep, "kind": NOISE if plan.noise else ADAPTIVE if plan.adaptive else FIXED,
        "preset": plan.preset, "arms": plan.arms, "seeds": plan.seeds, "world_size": plan.world_size,
        "budgets": {arm: b.as_dict() for arm, b in plan.budgets.items()},
        "runs": [{"run_id": s.run_id, "arm": s.arm, "seed": s.seed, "config_hash": s.config_hash}
                 | ({"budget_factor": s.budget_factor} if s.budget_factor != 1.0 else {}) for s in plan.specs],
        "experiments": {arm: experiment(s.config, s.tokens, s.tokens_per_step, s.data_id) for arm, s in first.items()},
        "intervention_sets": {arm: s.intervention_sets for arm, s in first.items()},
        "adaptive": plan.adaptive.as_dict() if plan.adaptive else None,
        "noise": plan.noise,
        "inert": plan.inert,
    }


def kind_of(saved: dict[str, Any]) -> str:
    if isinstance(saved.get("kind"), str):
        return saved["kind"]
    return NOISE if saved.get("noise") else ADAPTIVE if saved.get("adaptive") else FIXED


def conflicts(saved: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why `new` cannot join the sweep `saved` started (None: it can). A sweep's kind, an adaptive
    design (its settings and arms) and what each arm computes are fixed when it starts."""
    name = new["sweep"]
    if kind_of(saved) != new["kind"]:
        return (f"sweep {name!r} was started as {ARTICLES[kind_of(saved)]}; this command would run it as "
                f"{ARTICLES[new['kind']]}, which would change its design and overwrite its plan")
    if new["kind"] == ADAPTIVE:
        before, now = saved.get("adaptive") or {}, new["adaptive"]
        changed = [f"{k} {before.get(k)} -> {now.get(k)}" for k in ADAPTIVE_SETTINGS if before.get(k) != now.get(k)]
        if set(saved.get("arms", [])) != set(new["arms"]):
            changed.append(f"arms {', '.join(saved.get('arms', []))} -> {', '.join(new['arms'])}")
        if changed:
            return (f"adaptive sweep {name!r} started with other settings ({'; '.join(changed)}): a sequential design "
                    "is fixed when it starts, or its error rates are lost")
    if new["kind"] == NOISE and (saved.get("noise") or {}).get("arm") != (new.get("noise") or {}).get("arm"):
        return f"noise study {name!r} studies arm {(saved.get('noise') or {}).get('arm')!r}, not {new['noise'].get('arm')!r}"
    experiments = saved.get("experiments")
    if not isinstance(experiments, dict) or BASELINE not in experiments:
        return None  # a plan saved before experiments were: the report checks the recorded runs
    from harness.core.scheme import check_known, every_key, shown

    for keys in experiments.values():
        check_known(keys, f"the saved plan of sweep {name!r}")
    base = experiments[BASELINE]
    for arm, keys in new["experiments"].items():
        own = set(new["intervention_sets"].get(arm, {})) if arm != BASELINE else set()
        reference, planned = every_key(experiments.get(arm, base)), every_key(keys)
        changed = []
        for k in [*planned, *(k for k in reference if k not in planned)]:
            before, now = reference.get(k), planned.get(k)
            if before != now and (arm in experiments or k not in own):
                changed.append(f"{k} {shown(k, before)} -> {shown(k, now)}")
        if changed:
            return (f"arm {arm!r} of sweep {name!r} would not be trained like the runs already planned "
                    f"({'; '.join(changed[:6])}{'; ...' if len(changed) > 6 else ''}): that is another experiment")
    return None


def check_saved(plan) -> None:
    """Refuse a plan that would change the design of the sweep of its name (see conflicts)."""
    from harness.core.errors import UserError

    saved = read_plan(plan.results, plan.sweep)
    if saved:
        why = conflicts(saved, plan_record(plan))
        if why:
            raise UserError(f"{why}; give a new --name for a new sweep")


def save_plan(plan) -> Path:
    """RESULTS/sweeps/<name>.json: the plan_record, merged into the one a command before it saved
    under the same name (runs, arms and seeds added; nothing of it overwritten), under a lock."""
    path = plan_path(plan.results, plan.sweep)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = plan_record(plan)
    with FileLock(str(path) + ".lock", timeout=60):
        saved = read_plan(plan.results, plan.sweep)
        if saved:
            from harness.core.errors import UserError

            why = conflicts(saved, record)
            if why:
                raise UserError(f"{why}; give a new --name for a new sweep")
            known = {r.get("run_id") for r in saved.get("runs", []) if isinstance(r, dict)}
            record = record | {
                "arms": list(dict.fromkeys([*saved.get("arms", []), *record["arms"]])),
                "seeds": sorted(set(saved.get("seeds", [])) | set(record["seeds"])),
                "runs": [*saved.get("runs", []), *(r for r in record["runs"] if r["run_id"] not in known)],
                "budgets": (saved.get("budgets") or {}) | record["budgets"],
                "experiments": (saved.get("experiments") or {}) | record["experiments"],
                "intervention_sets": (saved.get("intervention_sets") or {}) | record["intervention_sets"],
                "inert": (saved.get("inert") or {}) | record["inert"],
            }
        from harness.core.code import store_copy

        for cfg in plan.configs.values():  # the code its runs import (harness.core.code), kept with them
            for entry, source in zip(cfg.code, cfg.code_files):
                store_copy(plan.results, source, entry)
        atomic_write_json(path, record)
    return path


def read_plan(results: Path, sweep: str) -> dict[str, Any]:
    """A saved plan ({} when there is none or it is unreadable)."""
    plan = _read_json(plan_path(results, sweep))
    return plan if isinstance(plan, dict) else {}


def saved_sweeps(results: Path) -> list[str]:
    """Names of the sweeps with a saved plan, sorted by file name."""
    folder = Path(results) / PLANS
    names = []
    if folder.is_dir():
        for p in sorted(folder.glob("*.json")):
            data = None if p.name.endswith(".jobs.json") else _read_json(p)
            if isinstance(data, dict) and isinstance(data.get("sweep"), str):
                names.append(data["sweep"])
    return names


def record_jobs(results: Path, sweep: str, jobs: dict[str, str]) -> None:
    """Add run id -> job id entries to RESULTS/sweeps/<sweep>.jobs.json."""
    path = jobs_path(results, sweep)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):
        known = _read_json(path) or {}
        known.update(jobs)
        atomic_write_json(path, known)


def read_jobs(results: Path, sweep: str) -> dict[str, str]:
    jobs = _read_json(jobs_path(results, sweep))
    return jobs if isinstance(jobs, dict) else {}


LADDERS = "ladders"


def ladder_record(ladder) -> dict[str, Any]:
    """A ladder (harness.planning.ladder.Ladder) as saved in RESULTS/ladders/<name>.json: its
    rungs (each an ordinary sweep) with their sizes, and the size the report predicts at."""
    return {
        "ladder": ladder.name, "preset": ladder.preset, "arms": ladder.arms, "preset_params": ladder.preset_params,
        "target": ladder.target, "target_params": ladder.target_params, "scheme": ladder.scheme,
        "rungs": [{"sweep": r.sweep, "size": r.size.label, "n_layers": r.size.n_layers, "emb_dim": r.size.emb_dim,
                   "n_heads": r.size.n_heads, "params": r.params, "lr": r.lr, "global_batch": r.global_batch,
                   "tokens": r.plan.budgets[BASELINE].tokens, "steps": r.plan.budgets[BASELINE].steps}
                  for r in ladder.rungs],
    }


def ladder_path(results: Path, name: str) -> Path:
    return Path(results) / LADDERS / f"{name}.json"


def ladder_conflict(saved: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why `new` cannot continue the ladder `saved` started: its rungs or arms are fixed at the
    start (the target may change: it only says where the report predicts)."""
    before = [(r.get("sweep"), r.get("size")) for r in saved.get("rungs", []) if isinstance(r, dict)]
    now = [(r["sweep"], r["size"]) for r in new["rungs"]]
    if before != now:
        return (f"ladder {new['ladder']!r} was started with rungs {', '.join(str(s) for _, s in before)}; this command "
                f"has {', '.join(s for _, s in now)}, which would change its design")
    if set(saved.get("arms", [])) != set(new["arms"]):
        return (f"ladder {new['ladder']!r} was started with arms {', '.join(saved.get('arms', []))}; this command has "
                f"{', '.join(new['arms'])}")
    return None


def save_ladder(ladder, check_only: bool = False) -> Path:
    """Write (or, with check_only, only check) RESULTS/ladders/<name>.json; a ladder of that name
    with other rungs or arms is refused."""
    from harness.core.errors import UserError

    record = ladder_record(ladder)
    path = ladder_path(ladder.rungs[0].plan.results, ladder.name)
    saved = _read_json(path)
    if isinstance(saved, dict):
        why = ladder_conflict(saved, record)
        if why:
            raise UserError(f"{why}; give a new --name for a new ladder")
    if not check_only:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
    return path


def saved_ladders(results: Path) -> dict[str, dict[str, Any]]:
    """The saved ladders by name (unreadable files are skipped)."""
    folder = Path(results) / LADDERS
    found = {}
    if folder.is_dir():
        for p in sorted(folder.glob("*.json")):
            data = _read_json(p)
            if isinstance(data, dict) and isinstance(data.get("ladder"), str) and isinstance(data.get("rungs"), list):
                found[data["ladder"]] = data
    return found
