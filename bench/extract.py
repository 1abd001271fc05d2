"""Benchmark: features.mimic extraction (polars) against a straightforward pandas version.

Four runs per database, each a fresh subprocess (wall time, CPU time and its own peak
resident memory, ``VmHWM`` read by the child at its end), alternating on the same data in
one invocation:

1. ours, in-hospital mortality only: ``extract(task="ihm")``;
2. pandas, in-hospital mortality only: benchmark cohort, event validation, 48-hour window,
   value cleaning, last value per hourly bin, the 48 x 76 grid, splits, normaliser,
   Parquet + npy output;
3. ours, all four tasks: ``extract_all(tasks=TASKS)`` (the shared stage once);
4. pandas, all four tasks: the same steps over whole stays (``-1e-6 < hours < LOS +
   1e-6``; last value per hourly bin over the whole stay, forward fill within each stay),
   the in-hospital-mortality grid from the first 48 hours, the hourly samples of
   decompensation and length of stay (the benchmark's per-stay loop), and the phenotype
   labels from DIAGNOSES_ICD joined with D_ICD_DIAGNOSES and ``phenotypes.json``.

The pandas versions read the event tables in chunks of 2M rows and share only the final
numpy builders with ours (``build_grid`` / ``build_hourly``, which also forward-fill,
``fit_normaliser``, ``assign_splits``). After each pandas run its outputs are compared with
ours: the grid (IHM), and per whole-stay task the samples table, the hourly rows and the
stays' order, lengths, offsets and first-event hours.

The synthetic databases come from ``features.synthetic.generate`` (about 1,540 chart rows
per patient). Where a generated folder has no D_ICD_DIAGNOSES table (the generator did not
write one when this was written), the bench writes ``D_ICD_DIAGNOSES.csv`` holding every
code that DIAGNOSES_ICD uses, so every synthetic diagnosis is "known".

The summary also gives ours' all-four peak memory per stay-hour and extrapolates it to full
MIMIC-III (about 3.45M stay-hours, 42,000 stays) against the 4 GiB target.

Usage:
    .venv/bin/python bench/extract.py --work /tmp/rank1-bench --chart-rows 1e6,1e7,3e7 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from machine import describe

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO.parent / "shared" / "data" / "mimic3-demo"
# Chart rows per generated patient, measured on the generator (about 1,540).
CHART_ROWS_PER_PATIENT = 1540

RUN_CHILD = """
import json, sys, time

def peak_mib():
    # VmHWM is this process's own peak resident set (ru_maxrss of a spawned child can
    # include the parent's pages from before exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[3])
from extract import run_kind
result = run_kind(sys.argv[5], sys.argv[1], sys.argv[2])
result["seconds"] = time.perf_counter() - t0
result["peak_mib"] = peak_mib()
open(sys.argv[4], "w").write(json.dumps(result))
"""

#: The four runs per database, in the order they alternate.
KINDS = ("ours-ihm", "pandas-ihm", "ours-all", "pandas-all")


def run_kind(kind: str, data: str, out: str) -> dict:
    """One measured run (in the child): what it extracted, and ours' own step timings."""
    if kind == "ours-ihm":
        from features.mimic.extract import extract

        m = extract(data, out, task="ihm", progress=False)
        return {"stays": m.stays, "timings": m.timings_s}
    if kind == "ours-all":
        from features.mimic.extract import extract_all
        from features.mimic.task_names import TASKS

        ms = extract_all(data, out, tasks=TASKS, progress=False)
        whole = ms["decompensation"]
        return {
            "stays": {task: m.stays for task, m in ms.items()},
            "hourly_rows": whole.hourly_rows,
            "samples": {task: m.samples for task, m in ms.items() if task != "ihm"},
            "timings": ms["phenotyping"].timings_s,
        }
    if kind == "pandas-ihm":
        return {"stays": pandas_extract(data, out)}
    if kind == "pandas-all":
        return {"stays": pandas_extract_all(data, out)}
    raise ValueError(kind)


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


def _pandas_root(mimic: Path):
    """The root cohort (adults, one stay per admission, no transfers) with the label."""
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
    return stays[stays.age >= 18]


def _pandas_events(mimic: Path, root, cand):
    """Validated, cleaned events of the candidate stays inside each one's window.

    ``cand`` has ``subject_id``, ``stay``, ``intime``, ``outtime`` and ``window`` (hours):
    an event is kept when ``-1e-6 < hours since INTIME < window + 1e-6``.
    """
    import pandas as pd

    from features.mimic.variables import PANDAS_NA, load_variables

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
            ev = ev[(ev.hours > -1e-6) & (ev.hours < ev.window + 1e-6)]
            kept.append(_clean_pandas(ev, cats))
    return pd.concat(kept)


def _pandas_bins(ev, last_bin):
    """The last value per (stay, variable, hourly bin); ``last_bin`` caps the bin."""
    ev = ev.assign(bin=np.clip(np.floor(ev.hours - 1e-6), 0, last_bin).astype(int))
    ev = ev.sort_values(
        ["stay", "var", "bin", "charttime", "key_num", "key_str"], na_position="first"
    )
    return ev.groupby(["stay", "var", "bin"], sort=False).val.last().reset_index()


def _pl_bins(bins):
    import polars as pl

    return pl.from_pandas(bins[["stay", "var", "bin", "val"]])


def pandas_extract(mimic_dir: str, out_dir: str) -> int:
    """In-hospital mortality in pandas; writes stays.parquet and grid.npy, returns stays."""
    from features.mimic.grid import build_grid, fit_normaliser
    from features.mimic.splits import assign_splits

    mimic = Path(mimic_dir)
    root = _pandas_root(mimic)
    task = root[root.los.notna() & (root.los * 24 >= 48 - 1e-6)]
    # Only diagnoses whose code D_ICD_DIAGNOSES knows count, as in the benchmark.
    code = {"icd9_code": str, "ICD9_CODE": str}
    diag = _read(mimic, "DIAGNOSES_ICD", ["subject_id", "hadm_id", "icd9_code"], dtype=code)
    dictionary = _read(mimic, "D_ICD_DIAGNOSES", ["icd9_code"], dtype=code)
    diag = diag[diag.icd9_code.isin(dictionary.icd9_code)][["subject_id", "hadm_id"]]
    task = task.merge(diag.drop_duplicates(), on=["subject_id", "hadm_id"])
    cand = task[["subject_id", "icustay_id", "intime", "outtime"]].rename(
        columns={"icustay_id": "stay"}
    )
    ev = _pandas_events(mimic, root, cand.assign(window=48.0))
    bins = _pandas_bins(ev, 47)
    n_events = ev.groupby("stay").size()
    task = task[task.icustay_id.isin(n_events.index)].sort_values(
        ["subject_id", "intime", "icustay_id"]
    )
    grid = build_grid(_pl_bins(bins), task.icustay_id.to_numpy())
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


#: Length-of-stay buckets in hours, as the benchmark's ``CustomBins`` (days x 24).
_LOS_BINS = [(-1e18, 24.0)] + [(d * 24.0, (d + 1) * 24.0) for d in range(1, 8)]
_LOS_BINS += [(8 * 24.0, 14 * 24.0), (14 * 24.0, 1e18)]


def _pandas_hourly_samples(stays, task: str):
    """The benchmark's per-stay loop: prediction times, decompensation label or LOS bucket."""
    import pandas as pd

    parts = []
    for row in stays.itertuples():
        los = row.length_hours
        lived = row.death_hours if pd.notna(row.death_hours) else 1e18
        end = min(los, lived) if task == "decompensation" else los
        times = np.arange(0.0, end + 1e-6, 1.0)
        times = times[(times > 4.0) & (times > row.first_event_hours)]
        part = {"icustay_id": np.full(len(times), row.icustay_id), "hour": times.astype(int)}
        if task == "decompensation":
            part["label"] = ((row.label == 1) & (lived - times < 24.0)).astype(int)
        else:
            remaining = los - times
            part["remaining_hours"] = remaining
            bucket = np.zeros(len(times), dtype=int)
            for i, (a, b) in enumerate(_LOS_BINS):
                bucket[(a <= remaining) & (remaining < b)] = i
            part["bucket"] = bucket
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True)


def _pandas_phenotypes(stays, known):
    """The 25 phenotype labels of each stay from its admission's known diagnoses."""
    import pandas as pd

    spec = json.loads((REPO / "features" / "mimic" / "phenotypes.json").read_text())
    names = [p["name"] for p in spec["phenotypes"]]
    codes = pd.DataFrame(
        [(c, p["name"]) for p in spec["phenotypes"] for c in p["codes"]],
        columns=["icd9_code", "phenotype"],
    )
    hits = known.merge(codes, on="icd9_code")[["hadm_id", "phenotype"]].drop_duplicates()
    table = pd.crosstab(hits.hadm_id, hits.phenotype).reindex(columns=names, fill_value=0)
    labels = table.reindex(stays.hadm_id, fill_value=0).clip(upper=1).to_numpy()
    out = pd.DataFrame(labels, columns=names)
    out.insert(0, "icustay_id", stays.icustay_id.to_numpy())
    return out


def pandas_extract_all(mimic_dir: str, out_root: str) -> dict:
    """All four tasks in pandas from one read: ``out_root/<task>/``, as ours lays them out."""
    from features.mimic.grid import build_grid, build_hourly, fit_normaliser
    from features.mimic.splits import assign_splits

    mimic = Path(mimic_dir)
    root = _pandas_root(mimic)
    # Codes are text ("0389" is not 389).
    code = {"icd9_code": str, "ICD9_CODE": str}
    diag = _read(mimic, "DIAGNOSES_ICD", ["subject_id", "hadm_id", "icd9_code"], dtype=code)
    dictionary = _read(mimic, "D_ICD_DIAGNOSES", ["icd9_code"], dtype=code)
    known = diag[diag.icd9_code.isin(dictionary.icd9_code)]
    keys = ["subject_id", "hadm_id"]
    union = root.merge(known[keys].drop_duplicates(), on=keys)
    union = union[union.los.notna()].copy()
    union["length_hours"] = union.los * 24
    union["death_hours"] = (union.deathtime - union.intime).dt.total_seconds() / 3600
    cand = union[["subject_id", "icustay_id", "intime", "outtime", "length_hours"]].rename(
        columns={"icustay_id": "stay", "length_hours": "window"}
    )
    ev = _pandas_events(mimic, root, cand)
    order = ["subject_id", "intime", "icustay_id"]
    out = Path(out_root)
    result = {}

    # In-hospital mortality: the first 48 hours of the stays of at least 48 hours.
    first48 = ev[ev.hours < 48 + 1e-6]
    ihm = union[union.length_hours >= 48 - 1e-6]
    ihm = ihm[ihm.icustay_id.isin(first48.stay.unique())].sort_values(order)
    first48 = first48[first48.stay.isin(ihm.icustay_id)]
    grid = build_grid(_pl_bins(_pandas_bins(first48, 47)), ihm.icustay_id.to_numpy())
    del first48
    split = assign_splits(ihm.subject_id.to_numpy(), seed=0)
    ihm = ihm.assign(split=ihm.subject_id.map(split))
    fit_normaliser(grid, np.flatnonzero((ihm.split == "train").to_numpy()))
    (out / "ihm").mkdir(parents=True, exist_ok=True)
    ihm[["subject_id", "hadm_id", "icustay_id", "label", "split"]].to_parquet(
        out / "ihm" / "stays.parquet"
    )
    np.save(out / "ihm" / "grid.npy", grid)
    result["ihm"] = len(ihm)
    del grid

    # Whole stays: admissions with a known diagnosis, an event inside the stay.
    whole = union.merge(known[keys].drop_duplicates(), on=keys)
    first = ev.groupby("stay").hours.min()
    whole = whole[whole.icustay_id.isin(first.index)].sort_values(order)
    whole["first_event_hours"] = whole.icustay_id.map(first).to_numpy()
    lengths = np.maximum(np.floor(whole.length_hours.to_numpy() + 1 - 1e-6), 1).astype(int)
    ev = ev[ev.stay.isin(whole.icustay_id)]
    window = ev.stay.map(whole.set_index("icustay_id").length_hours)
    last_bin = np.maximum(np.floor(window + 1 - 1e-6) - 1, 0)
    bins = _pandas_bins(ev, last_bin.to_numpy())
    del ev
    hourly, offsets = build_hourly(_pl_bins(bins), whole.icustay_id.to_numpy(), lengths)
    del bins
    split = assign_splits(whole.subject_id.to_numpy(), seed=0)
    whole = whole.assign(split=whole.subject_id.map(split), hours=lengths, offset=offsets[:-1])
    samples = {
        "decompensation": _pandas_hourly_samples(whole, "decompensation"),
        "length-of-stay": _pandas_hourly_samples(whole, "length-of-stay"),
        "phenotyping": _pandas_phenotypes(whole, known),
    }
    in_train = np.repeat((whole.split == "train").to_numpy(), lengths)
    columns = ["subject_id", "hadm_id", "icustay_id", "label", "split", "length_hours"]
    columns += ["hours", "offset", "first_event_hours", "death_hours"]
    for task, table in samples.items():
        folder = out / task
        folder.mkdir(parents=True, exist_ok=True)
        fit_normaliser(hourly, np.flatnonzero(in_train))
        whole[columns].to_parquet(folder / "stays.parquet")
        np.save(folder / "hourly.npy", hourly)
        table.to_parquet(folder / "samples.parquet")
        result[task] = len(whole)
    return result


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


def measure(kind: str, data: Path, out: Path) -> dict:
    """Run ``kind`` once on fresh output; the child writes its JSON result to a file."""
    shutil.rmtree(out, ignore_errors=True)
    result_file = out.parent / f"{out.name}.json"
    here = str(Path(__file__).parent)
    usage = run_measured(RUN_CHILD, str(data), str(out), here, str(result_file), kind)
    usage.pop("peak_mib")
    usage.update(json.loads(result_file.read_text()))
    return usage


def chart_rows(folder: Path) -> int:
    import polars as pl

    path = next(p for p in folder.iterdir() if p.name.lower().startswith("chartevents.csv"))
    return pl.scan_csv(path, infer_schema=False).select(pl.len()).collect().item()


def ensure_code_dictionary(folder: Path) -> bool:
    """Write D_ICD_DIAGNOSES.csv from the codes of DIAGNOSES_ICD if the folder lacks one.

    Returns whether one was written (every code the diagnoses use is then known).
    """
    import polars as pl

    if any(p.name.lower().startswith("d_icd_diagnoses.csv") for p in folder.iterdir()):
        return False
    codes = (
        pl.read_csv(_find(folder, "DIAGNOSES_ICD"), infer_schema=False)
        .rename(str.upper)
        .select(pl.col("ICD9_CODE").drop_nulls().unique().sort())
    )
    codes.with_columns(
        ROW_ID=pl.int_range(1, codes.height + 1),
        SHORT_TITLE=pl.lit("synthetic"),
        LONG_TITLE=pl.lit("synthetic code"),
    ).select("ROW_ID", "ICD9_CODE", "SHORT_TITLE", "LONG_TITLE").write_csv(
        folder / "D_ICD_DIAGNOSES.csv"
    )
    return True


def _same_array(a: Path, b: Path) -> bool:
    x, y = np.load(a, mmap_mode="r"), np.load(b, mmap_mode="r")
    if x.shape != y.shape:
        return False
    step = 1 << 20
    return all(
        np.allclose(x[i : i + step], y[i : i + step], atol=1e-5, equal_nan=True)
        for i in range(0, len(x), step)
    )


def _same_table(a: Path, b: Path, columns: list[str] | None = None) -> bool:
    """Equal values column by column (ours' column set; dtypes may differ)."""
    import polars as pl

    x, y = pl.read_parquet(a), pl.read_parquet(b)
    columns = columns or x.columns
    if x.height != y.height or any(c not in y.columns for c in columns):
        return False
    for c in columns:
        u, v = x[c].to_numpy(), y[c].to_numpy()
        if u.dtype.kind == "f" or v.dtype.kind == "f":
            if not np.allclose(u.astype(float), v.astype(float), atol=1e-9, equal_nan=True):
                return False
        elif not np.array_equal(u.astype(str) if u.dtype.kind == "O" else u, v):
            return False
    return True


def compare_ihm(ours: Path, theirs: Path) -> bool:
    return _same_array(ours / "grid.npy", theirs / "grid.npy") and _same_table(
        ours / "stays.parquet", theirs / "stays.parquet", ["icustay_id", "label", "split"]
    )


def compare_all(ours: Path, theirs: Path) -> dict[str, bool]:
    """Per task: ours and pandas' samples, hourly rows (or grid) and stay order agree."""
    same = {"ihm": compare_ihm(ours / "ihm", theirs / "ihm")}
    for task in ("decompensation", "length-of-stay", "phenotyping"):
        a, b = ours / task, theirs / task
        same[task] = (
            _same_table(a / "samples.parquet", b / "samples.parquet")
            and _same_array(a / "hourly.npy", b / "hourly.npy")
            and _same_table(
                a / "stays.parquet",
                b / "stays.parquet",
                ["icustay_id", "label", "split", "hours", "offset", "first_event_hours"],
            )
        )
    return same


#: Full MIMIC-III, for the memory extrapolation: about this many decompensation samples
#: (roughly that many stay-hours) and whole-stay task stays.
FULL_STAY_HOURS = 3.45e6
FULL_STAYS = 42_000
MEMORY_TARGET_MIB = 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/rank1-bench"))
    parser.add_argument("--chart-rows", default="1e6,1e7")
    parser.add_argument(
        "--no-pandas-above",
        type=float,
        default=float("inf"),
        help="skip the pandas runs for databases with more chart rows",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds of the four runs per database; the table shows each kind's median run",
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
        if ensure_code_dictionary(folder):
            print(f"wrote {folder}/D_ICD_DIAGNOSES.csv from the DIAGNOSES_ICD codes", flush=True)
        datasets.append((f"synthetic ~{target:.0e}", folder))
    print(describe())
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    rows = []
    for name, folder in datasets:
        n_chart = chart_rows(folder)
        entry = {"data": name, "chart_rows": n_chart}
        out = {kind: args.work / f"{kind}-{folder.name}" for kind in KINDS}
        runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        for _ in range(args.repeats):
            for kind in KINDS:
                if kind.startswith("pandas") and n_chart > args.no_pandas_above:
                    continue
                runs[kind].append(measure(kind, folder, out[kind]))
                if kind == "pandas-ihm":
                    same = compare_ihm(out["ours-ihm"], out["pandas-ihm"])
                    entry["same_ihm"] = entry.get("same_ihm", True) and same
                    print(f"{name}: pandas IHM-only same as ours: {same}", flush=True)
                if kind == "pandas-all":
                    same = compare_all(out["ours-all"], out["pandas-all"])
                    entry["same_all"] = {
                        task: entry.get("same_all", {}).get(task, True) and flag
                        for task, flag in same.items()
                    }
                    print(f"{name}: pandas all-four same as ours: {same}", flush=True)
        for kind, done in runs.items():
            if done:
                # The run with the median wall time stands for the kind; all are kept.
                entry[kind] = sorted(done, key=lambda r: r["seconds"])[(len(done) - 1) // 2]
                entry[f"{kind} seconds"] = [round(r["seconds"], 3) for r in done]
                entry[f"{kind} cpu"] = [round(r["cpu"], 3) for r in done]
        rows.append(entry)
        print(json.dumps(entry), flush=True)
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    (args.work / "results.json").write_text(json.dumps(rows, indent=2))
    print_tables(rows)


def _yes(flag: bool | None) -> str:
    return "" if flag is None else ("yes" if flag else "NO")


def print_tables(rows: list[dict]) -> None:
    print()
    print(
        "| data | chart rows | IHM stays | whole stays | stay-hours | ours IHM: s / CPU s / MiB "
        "| ours all four: s / CPU s / MiB | all / IHM (wall, CPU) "
        "| pandas IHM: s / CPU s / MiB | pandas all four: s / CPU s / MiB "
        "| speed-up IHM, all | same IHM | same all four |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")

    def cell(run: dict | None) -> str:
        if not run:
            return "skipped"
        return f"{run['seconds']:.2f} / {run['cpu']:.1f} / {run['peak_mib']:.0f}"

    for e in rows:
        o1, o4 = e["ours-ihm"], e["ours-all"]
        p1, p4 = e.get("pandas-ihm"), e.get("pandas-all")
        speed = ""
        if p1 and p4:
            speed = f"{p1['seconds'] / o1['seconds']:.1f}x, {p4['seconds'] / o4['seconds']:.1f}x"
        same_all = e.get("same_all")
        print(
            f"| {e['data']} | {e['chart_rows']:,} | {o4['stays']['ihm']:,} "
            f"| {o4['stays']['decompensation']:,} | {o4['hourly_rows']:,} | {cell(o1)} "
            f"| {cell(o4)} | {o4['seconds'] / o1['seconds']:.2f}x, {o4['cpu'] / o1['cpu']:.2f}x "
            f"| {cell(p1)} | {cell(p4)} | {speed} | {_yes(e.get('same_ihm'))} "
            f"| {_yes(all(same_all.values()) if same_all else None)} |"
        )
    print()
    print("Peak memory of ours all four per stay-hour, and the extrapolation to full MIMIC-III")
    print(f"({FULL_STAY_HOURS / 1e6:.2f}M stay-hours, {FULL_STAYS:,} stays; target 4 GiB):")
    for e in rows:
        o4 = e["ours-all"]
        per = o4["peak_mib"] * 1024 / o4["hourly_rows"]
        print(
            f"- {e['data']}: {o4['peak_mib']:.0f} MiB for {o4['hourly_rows']:,} stay-hours = "
            f"{per:.2f} KiB per stay-hour -> {per * FULL_STAY_HOURS / 2**20:.1f} GiB if "
            "all of it scaled with stay-hours"
        )
    if len(rows) >= 2:
        a, b = rows[-2]["ours-all"], rows[-1]["ours-all"]
        slope = (b["peak_mib"] - a["peak_mib"]) / (b["hourly_rows"] - a["hourly_rows"])
        full = b["peak_mib"] + slope * (FULL_STAY_HOURS - b["hourly_rows"])
        print(
            f"- marginal, {rows[-2]['data']} -> {rows[-1]['data']}: {slope * 1024:.2f} KiB per "
            f"extra stay-hour -> EXTRAPOLATED full MIMIC-III peak {full / 1024:.1f} GiB "
            f"({'under' if full <= MEMORY_TARGET_MIB else 'OVER'} the 4 GiB target)"
        )
    print()
    print("Ours all four, seconds per step (largest database):")
    for step, seconds in rows[-1]["ours-all"]["timings"].items():
        print(f"- {step}: {seconds:.2f}")


if __name__ == "__main__":
    main()
