"""Benchmark: features.mimic extraction (polars) against a straightforward pandas version.

Both run the same steps (benchmark cohort, event validation, 48-hour window, value
cleaning, last value per hourly bin, the 48 x 76 grid, splits, normaliser, Parquet + npy
output) on the MIMIC-III demo and on synthetic databases with about 1M, 10M and 30M chart
rows. Each run is a fresh subprocess, so its wall time and peak resident memory
(``VmHWM`` read by the child at its end) are its own; the two implementations alternate on the same
data in the same invocation. The pandas version reads the event tables in chunks of 2M
rows (reading 30M rows at once would need many GiB) and shares only the final numpy grid
builder with ours. After each pair the two grids are compared.

Usage:
    .venv/bin/python bench/extract.py --work /tmp/rank1-bench --chart-rows 1e6,1e7,3e7
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from machine import describe

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO.parent / "shared" / "data" / "mimic3-demo"
# Chart rows per generated patient, measured on the generator (about 1,540).
CHART_ROWS_PER_PATIENT = 1540

RUN_OURS = """
import json, sys, time

def peak_mib():
    # VmHWM is this process's own peak resident set (ru_maxrss of a spawned child can
    # include the parent's pages from before exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
t0 = time.perf_counter()
from features.mimic.extract import extract
m = extract(sys.argv[1], sys.argv[2], progress=False)
result = {"seconds": time.perf_counter() - t0, "stays": m.stays}
result["peak_mib"] = peak_mib()
open(sys.argv[4], "w").write(json.dumps(result))
"""

RUN_PANDAS = """
import json, sys, time

def peak_mib():
    # VmHWM is this process's own peak resident set (ru_maxrss of a spawned child can
    # include the parent's pages from before exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[3])
from extract import pandas_extract
n = pandas_extract(sys.argv[1], sys.argv[2])
result = {"seconds": time.perf_counter() - t0, "stays": n, "peak_mib": peak_mib()}
open(sys.argv[4], "w").write(json.dumps(result))
"""


# --------------------------------------------------------------------------------------
# The pandas baseline: the same steps, written the obvious way.
# --------------------------------------------------------------------------------------


def _find(mimic_dir: Path, table: str) -> Path:
    for path in mimic_dir.iterdir():
        if path.name.lower() in (f"{table.lower()}.csv", f"{table.lower()}.csv.gz"):
            return path
    raise FileNotFoundError(f"{mimic_dir}: {table} missing")


def _read(mimic_dir: Path, table: str, columns: list[str], **kwargs):
    import pandas as pd

    path = _find(mimic_dir, table)
    header = pd.read_csv(path, nrows=0).columns
    names = {c.lower(): c for c in header}
    usecols = [names[c] for c in columns if c in names]
    frames = pd.read_csv(path, usecols=usecols, **kwargs)
    if kwargs.get("chunksize"):
        return (f.rename(columns=str.lower) for f in frames)
    return frames.rename(columns=str.lower)


def _dates(frame, columns):
    import pandas as pd

    for c in columns:
        frame[c] = pd.to_datetime(frame[c], format="%Y-%m-%d %H:%M:%S")
    return frame


def pandas_extract(mimic_dir: str, out_dir: str) -> int:
    """The extraction in pandas; writes stays.parquet and grid.npy, returns the stay count."""
    import pandas as pd
    import polars as pl

    from features.mimic.grid import build_grid, fit_normaliser
    from features.mimic.splits import assign_splits
    from features.mimic.variables import PANDAS_NA, load_variables

    mimic = Path(mimic_dir)
    icu = _read(
        mimic,
        "ICUSTAYS",
        [
            "subject_id",
            "hadm_id",
            "icustay_id",
            "dbsource",
            "first_careunit",
            "last_careunit",
            "first_wardid",
            "last_wardid",
            "intime",
            "outtime",
            "los",
        ],
    )
    icu = _dates(icu, ["intime", "outtime"])
    adm = _dates(
        _read(
            mimic, "ADMISSIONS", ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime"]
        ),
        ["admittime", "dischtime", "deathtime"],
    )
    pat = _dates(_read(mimic, "PATIENTS", ["subject_id", "gender", "dob", "dod"]), ["dob", "dod"])
    stays = icu[(icu.first_wardid == icu.last_wardid) & (icu.first_careunit == icu.last_careunit)]
    stays = stays.merge(adm, on=["subject_id", "hadm_id"]).merge(pat, on="subject_id")
    n_per = stays.groupby("hadm_id").icustay_id.count()
    stays = stays[stays.hadm_id.isin(n_per[n_per == 1].index)].copy()
    age = (stays.intime - stays.dob).dt.total_seconds() / (60 * 60 * 24 * 365)
    stays["age"] = np.where(age >= 150, 90.0, age)

    def inside(t, a, b):
        return stays[t].notna() & (stays[a] <= stays[t]) & (stays[t] <= stays[b])

    stays["label"] = (
        inside("dod", "admittime", "dischtime") | inside("deathtime", "admittime", "dischtime")
    ).astype(int)
    root = stays[stays.age >= 18]
    task = root[root.los.notna() & (root.los * 24 >= 48 - 1e-6)]
    diag = _read(mimic, "DIAGNOSES_ICD", ["subject_id", "hadm_id"]).drop_duplicates()
    task = task.merge(diag, on=["subject_id", "hadm_id"])

    variables = load_variables()
    item_rows = [
        (i, k, v.clean, u)
        for k, v in enumerate(variables)
        for i, u in zip(v.itemids, v.label_units, strict=True)
    ]
    items = pd.DataFrame(item_rows, columns=["itemid", "var", "rule", "label_unit"])
    cats = {
        (k, c): float(j)
        for k, v in enumerate(variables)
        if v.clean == "category"
        for j, c in enumerate(v.categories)
    }
    root_ids = root[["subject_id", "hadm_id", "icustay_id"]].rename(
        columns={"icustay_id": "root_icustay"}
    )
    cand = task[["subject_id", "icustay_id", "intime", "outtime"]].rename(
        columns={"icustay_id": "stay"}
    )
    kept = []
    for table in ("CHARTEVENTS", "LABEVENTS", "OUTPUTEVENTS"):
        cols = ["subject_id", "hadm_id", "icustay_id", "itemid", "charttime", "value", "valueuom"]
        for chunk in _read(
            mimic,
            table,
            cols,
            chunksize=2_000_000,
            dtype={"value": str, "valueuom": str, "VALUE": str, "VALUEUOM": str},
            keep_default_na=True,
        ):
            if "icustay_id" not in chunk:
                chunk["icustay_id"] = np.nan
            ev = chunk[
                chunk.itemid.isin(items.itemid)
                & chunk.hadm_id.notna()
                & chunk.value.notna()
                & ~chunk.value.isin(PANDAS_NA)
            ]
            ev = ev.merge(items, on="itemid").merge(root_ids, on=["subject_id", "hadm_id"])
            ev = ev.assign(icustay_id=ev.icustay_id.fillna(ev.root_icustay))
            ev = ev[ev.icustay_id == ev.root_icustay]
            ev = ev.assign(charttime=pd.to_datetime(ev.charttime, format="%Y-%m-%d %H:%M:%S"))
            ev = ev.merge(cand, on="subject_id")
            ev = ev[
                (ev.icustay_id == ev.stay)
                | ((ev.charttime >= ev.intime) & (ev.charttime <= ev.outtime))
            ]
            hours = (ev.charttime - ev.intime).dt.total_seconds() / 3600
            ev = ev.assign(hours=hours)
            ev = ev[(ev.hours > -1e-6) & (ev.hours < 48 + 1e-6)]
            kept.append(_clean_pandas(ev, cats))
    ev = pd.concat(kept)
    ev["bin"] = np.clip(np.floor(ev.hours - 1e-6), 0, 47).astype(int)
    ev = ev.sort_values(
        ["stay", "var", "bin", "charttime", "key_num", "key_str"], na_position="first"
    )
    bins = ev.groupby(["stay", "var", "bin"], sort=False).val.last().reset_index()
    n_events = ev.groupby("stay").size()
    task = task[task.icustay_id.isin(n_events.index)].sort_values(
        ["subject_id", "intime", "icustay_id"]
    )
    grid = build_grid(
        pl.from_pandas(bins[["stay", "var", "bin", "val"]]), task.icustay_id.to_numpy()
    )
    split = assign_splits(task.subject_id.to_numpy(), seed=0)
    task = task.assign(split=task.subject_id.map(split))
    fit_normaliser(grid[(task.split == "train").to_numpy()])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task[["subject_id", "hadm_id", "icustay_id", "label", "split"]].to_parquet(
        out / "stays.parquet"
    )
    np.save(out / "grid.npy", grid)
    return len(task)


def _clean_pandas(ev, cats):
    import pandas as pd

    raw = ev.value
    num = pd.to_numeric(raw.str.strip(), errors="coerce")
    uom = ev.valueuom.fillna("").str.lower()
    dec = num.where(raw.str.match(r"^(\d+(\.\d*)?|\.\d+)$"))
    pair = raw.str.extract(r"^(\d+)/(\d+)$").astype(float)
    slash = raw.str.contains("/", regex=False)
    oz = uom.str.contains("oz", regex=False) | (ev.label_unit == "oz")
    lb = oz | uom.str.contains("lb", regex=False) | (ev.label_unit == "lb")
    w = np.where(oz, num / 16, num)
    inch = uom.str.contains("in", regex=False) | (ev.label_unit == "in")
    code = pd.Series(
        [cats.get(k) for k in zip(ev["var"], raw, strict=True)], index=ev.index, dtype=float
    )
    rule = ev.rule
    val = np.select(
        [
            rule == "bp_systolic",
            rule == "bp_diastolic",
            rule == "capillary_refill",
            rule == "fio2",
            rule == "lab_numeric",
            rule == "spo2",
            rule == "temperature",
            rule == "weight",
            rule == "height",
            rule == "category",
        ],
        [
            np.where(slash, pair[0], num),
            np.where(slash, pair[1], num),
            np.select(
                [raw.isin(["Normal <3 secs", "Brisk"]), raw.isin(["Abnormal >3 secs", "Delayed"])],
                [0.0, 1.0],
                np.nan,
            ),
            np.where(uom.str.contains("torr", regex=False), num, num / 100),
            dec,
            np.where(dec <= 1, dec * 100, dec),
            np.where(num >= 79, (num - 32) * 5 / 9, num),
            np.where(lb, w * 0.453592, w),
            np.where(inch, np.round(num * 2.54), num),
            code,
        ],
        num,
    )
    ev = ev.assign(val=val)
    ev = ev[ev.val.notna()]
    numeric = ev.rule != "category"
    numeric &= ~ev.rule.isin(["numeric"])
    return ev.assign(key_num=ev.val.where(numeric), key_str=ev.value.where(~numeric))[
        ["stay", "var", "hours", "charttime", "val", "key_num", "key_str"]
    ]


# --------------------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------------------


def run_measured(code: str, *args: str) -> dict:
    """Run a Python snippet in a fresh process; return its wall time and peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", code, *args], env)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"run failed with status {status}")
    return {
        "wall": wall,
        "peak_mib": usage.ru_maxrss / 1024,
        "cpu": usage.ru_utime + usage.ru_stime,
    }


def measure(code: str, data: Path, out: Path) -> dict:
    """Run once; the child prints its JSON result to a file we read back."""
    result_file = out.parent / f"{out.name}.json"
    usage = run_measured(code, str(data), str(out), str(Path(__file__).parent), str(result_file))
    usage.pop("peak_mib")
    usage.update(json.loads(result_file.read_text()))
    return usage


def chart_rows(folder: Path) -> int:
    import polars as pl

    path = next(p for p in folder.iterdir() if p.name.lower().startswith("chartevents.csv"))
    return pl.scan_csv(path, infer_schema=False).select(pl.len()).collect().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/rank1-bench"))
    parser.add_argument("--chart-rows", default="1e6,1e7,3e7")
    parser.add_argument(
        "--no-pandas-above",
        type=float,
        default=float("inf"),
        help="skip the pandas run for databases with more chart rows",
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    datasets = []
    if DEMO.exists():
        datasets.append(("demo", DEMO))
    for target in [float(x) for x in args.chart_rows.split(",") if x]:
        folder = args.work / f"synth-{int(target):d}"
        if not (folder / "synthetic_truth.csv").exists():
            from features.synthetic import generate

            t0 = time.perf_counter()
            generate(folder, patients=max(1, round(target / CHART_ROWS_PER_PATIENT)), seed=0)
            print(f"generated {folder} in {time.perf_counter() - t0:.1f} s", flush=True)
        datasets.append((f"synthetic ~{target:.0e}", folder))
    print(describe())
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    rows = []
    for name, folder in datasets:
        n_chart = chart_rows(folder)
        ours = measure(RUN_OURS, folder, args.work / f"ours-{folder.name}")
        entry = {"data": name, "chart_rows": n_chart, "ours": ours}
        if n_chart <= args.no_pandas_above:
            theirs = measure(RUN_PANDAS, folder, args.work / f"pandas-{folder.name}")
            entry["pandas"] = theirs
            a = np.load(args.work / f"ours-{folder.name}" / "grid.npy")
            b = np.load(args.work / f"pandas-{folder.name}" / "grid.npy")
            entry["grids_equal"] = bool(a.shape == b.shape and np.allclose(a, b, atol=1e-5))
        rows.append(entry)
        print(json.dumps(entry), flush=True)
    print()
    print(
        "| data | chart rows | stays | ours: extract s | ours: CPU s | ours: chart rows/s "
        "| ours: peak MiB | pandas: extract s | pandas: CPU s | pandas: peak MiB | speed-up "
        "| same grid |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for e in rows:
        o, p = e["ours"], e.get("pandas")
        rate = e["chart_rows"] / o["seconds"]
        line = (
            f"| {e['data']} | {e['chart_rows']:,} | {o['stays']:,} | {o['seconds']:.2f} | "
            f"{o['cpu']:.1f} | {rate / 1e6:.2f}M | {o['peak_mib']:.0f} | "
        )
        if p:
            line += (
                f"{p['seconds']:.2f} | {p['cpu']:.1f} | {p['peak_mib']:.0f} | "
                f"{p['seconds'] / o['seconds']:.1f}x | {'yes' if e['grids_equal'] else 'NO'} |"
            )
        else:
            line += "skipped | | | | |"
        print(line)
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    (args.work / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
