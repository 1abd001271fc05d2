"""Readers for the raw MIMIC-III tables as PhysioNet ships them.

Each table is found as ``NAME.csv`` or ``NAME.csv.gz`` (file name in any case) and read
lazily with polars, with explicit dtypes for the columns the pipeline uses and column
names normalised to lowercase (full MIMIC-III has UPPERCASE headers, the demo lowercase).

Bad input fails early with a :class:`MimicInputError` that names the file, and where it
can the column and the data row (1-based, header not counted): a missing table, a missing
column, a value that does not parse in a required column, a truncated gzip stream.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import polars as pl

DATETIME = pl.Datetime("us")
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"

#: Columns the pipeline reads from each table, with their dtypes. Columns not listed are
#: never parsed. ``required`` columns must not be empty; the others may be.
TABLES: dict[str, dict[str, pl.DataType]] = {
    "PATIENTS": {"subject_id": pl.Int64, "gender": pl.String, "dob": DATETIME, "dod": DATETIME},
    "ADMISSIONS": {
        "subject_id": pl.Int64,
        "hadm_id": pl.Int64,
        "admittime": DATETIME,
        "dischtime": DATETIME,
        "deathtime": DATETIME,
        "ethnicity": pl.String,
    },
    "ICUSTAYS": {
        "subject_id": pl.Int64,
        "hadm_id": pl.Int64,
        "icustay_id": pl.Int64,
        "dbsource": pl.String,
        "first_careunit": pl.String,
        "last_careunit": pl.String,
        "first_wardid": pl.Int64,
        "last_wardid": pl.Int64,
        "intime": DATETIME,
        "outtime": DATETIME,
        "los": pl.Float64,
    },
    "DIAGNOSES_ICD": {"subject_id": pl.Int64, "hadm_id": pl.Int64, "icd9_code": pl.String},
    "CHARTEVENTS": {
        "subject_id": pl.Int64,
        "hadm_id": pl.Int64,
        "icustay_id": pl.Int64,
        "itemid": pl.Int64,
        "charttime": DATETIME,
        "value": pl.String,
        "valueuom": pl.String,
    },
    "LABEVENTS": {
        "subject_id": pl.Int64,
        "hadm_id": pl.Int64,
        "itemid": pl.Int64,
        "charttime": DATETIME,
        "value": pl.String,
        "valueuom": pl.String,
    },
    "OUTPUTEVENTS": {
        "subject_id": pl.Int64,
        "hadm_id": pl.Int64,
        "icustay_id": pl.Int64,
        "itemid": pl.Int64,
        "charttime": DATETIME,
        "value": pl.String,
        "valueuom": pl.String,
    },
}

#: Columns that must hold a value on every row (an empty cell there is an error).
REQUIRED_NONEMPTY: dict[str, tuple[str, ...]] = {
    "PATIENTS": ("subject_id", "dob"),
    "ADMISSIONS": ("subject_id", "hadm_id", "admittime", "dischtime"),
    "ICUSTAYS": ("subject_id", "hadm_id", "icustay_id", "intime"),
    "DIAGNOSES_ICD": ("subject_id", "hadm_id"),
}

EVENT_TABLES = ("CHARTEVENTS", "LABEVENTS", "OUTPUTEVENTS")


class MimicInputError(ValueError):
    """A raw MIMIC-III table is missing, incomplete or does not parse."""


def table_path(mimic_dir: str | Path, table: str) -> Path:
    """Return the file that holds ``table`` in ``mimic_dir``.

    Args:
        mimic_dir: Folder with the MIMIC-III CSV files.
        table: Table name, e.g. ``"CHARTEVENTS"``.

    Returns:
        The ``.csv`` or ``.csv.gz`` file (file-name case ignored; ``.csv`` preferred).

    Raises:
        MimicInputError: If the folder or the table is missing.
    """
    folder = Path(mimic_dir)
    if not folder.is_dir():
        raise MimicInputError(f"{folder}: MIMIC-III folder does not exist")
    by_name = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    for suffix in (".csv", ".csv.gz"):
        found = by_name.get(table.lower() + suffix)
        if found is not None:
            return found
    raise MimicInputError(f"{folder}: table {table} not found (expected {table}.csv or .csv.gz)")


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_header(path: str | Path) -> list[str]:
    """Return the column names in the first line of a CSV(.gz) file, as written.

    Raises:
        MimicInputError: If the file is empty, not gzip when named .gz, or cut short.
    """
    path = Path(path)
    try:
        with _open_text(path) as handle:
            line = handle.readline()
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise MimicInputError(f"{path}: cannot read the header ({err})") from err
    if not line.strip():
        raise MimicInputError(f"{path}: file is empty (no header line)")
    return [name.strip().strip('"') for name in line.rstrip("\r\n").split(",")]


def check_gzip_complete(path: str | Path) -> None:
    """Read a ``.gz`` file to its end and fail if the stream is truncated or corrupt.

    Raises:
        MimicInputError: Naming the file when the gzip stream ends early or is damaged.
    """
    path = Path(path)
    if not path.name.lower().endswith(".gz"):
        return
    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error) as err:
        raise MimicInputError(
            f"{path}: gzip stream is truncated or corrupt ({err}); re-download the file"
        ) from err


def _column_map(path: Path, table: str, columns: list[str]) -> dict[str, str]:
    """Map each wanted lowercase column to its name in the file's header."""
    header = read_header(path)
    lower = {name.lower(): name for name in header}
    missing = [c for c in columns if c not in lower]
    if missing:
        raise MimicInputError(
            f"{path}: table {table} lacks column(s) {', '.join(missing)} "
            f"(header has: {', '.join(header)})"
        )
    return {c: lower[c] for c in columns}


def scan_table(mimic_dir: str | Path, table: str, *, parse_dates: bool = True) -> pl.LazyFrame:
    """Lazily scan ``table`` with explicit dtypes and lowercase column names.

    Only the columns in :data:`TABLES` are parsed; every other column is read as text and
    dropped straight away (projection pushdown keeps it from being materialised).

    Args:
        mimic_dir: Folder with the MIMIC-III CSV files.
        table: Table name, a key of :data:`TABLES`.
        parse_dates: Parse timestamp columns now; ``False`` leaves them as text for
            :func:`parse_datetimes` after the rows have been filtered.

    Returns:
        A LazyFrame with exactly the columns of ``TABLES[table]``, lowercase.

    Raises:
        MimicInputError: If the table or one of its columns is missing.
    """
    path = table_path(mimic_dir, table)
    schema = TABLES[table]
    names = _column_map(path, table, list(schema))
    header = read_header(path)
    # Every column is given a dtype so polars never guesses one from the first rows
    # (it would guess wrong on MIMIC's sparse text columns); unused ones stay text.
    overrides = {name: pl.String for name in header}
    # Timestamps are read as text and parsed with their explicit format afterwards:
    # polars' CSV datetime inference is several times slower than the rest of the parse,
    # and callers can filter rows before paying for it (see parse_datetimes).
    overrides.update({names[c]: dtype for c, dtype in schema.items() if dtype != DATETIME})
    lf = pl.scan_csv(
        path,
        schema_overrides=overrides,
        infer_schema=False,
        try_parse_dates=False,
        quote_char='"',
        # A quoted empty field ("") is as empty as an unquoted one.
        null_values=[""],
    )
    lf = lf.select([pl.col(names[c]).alias(c) for c in schema])
    return parse_datetimes(lf, table) if parse_dates else lf


def parse_datetimes(lf: pl.LazyFrame, table: str) -> pl.LazyFrame:
    """Parse the timestamp columns of ``table`` (read as text) with MIMIC's format.

    Parsing is strict: a value that is not ``YYYY-MM-DD HH:MM:SS`` raises, and the caller
    turns that into an error naming the row (see :func:`explain_failure`). Polars pushes
    row filters below this step, so in the event tables only the timestamps of rows the
    pipeline uses (the 17 variables, with a value and an admission) are checked.
    """
    columns = [c for c, dtype in TABLES[table].items() if dtype == DATETIME]
    return lf.with_columns(
        [pl.col(c).str.strptime(DATETIME, DATETIME_FORMAT, strict=True) for c in columns]
    )


def locate_bad_value(mimic_dir: str | Path, table: str) -> MimicInputError | None:
    """Find the first cell of ``table`` that does not parse as its column's dtype.

    This is the slow diagnostic path, run only after a typed scan has failed: it reads the
    used columns as text and casts them strictly, row by row in bulk.

    Returns:
        An error naming the file, column, row and value, or ``None`` if none was found.
    """
    path = table_path(mimic_dir, table)
    check_gzip_complete(path)
    schema = TABLES[table]
    names = _column_map(path, table, list(schema))
    header = read_header(path)
    text = pl.scan_csv(
        path,
        schema_overrides={n: pl.String for n in header},
        infer_schema=False,
        null_values=[""],
    ).select([pl.col(names[c]).alias(c) for c in schema])
    text = text.with_row_index("row", offset=1)
    required = set(REQUIRED_NONEMPTY.get(table, ()))
    for column, dtype in schema.items():
        raw = pl.col(column)
        if dtype == pl.String:
            bad = raw.is_null() if column in required else pl.lit(False)
        else:
            parsed = raw.str.strptime(DATETIME, DATETIME_FORMAT, strict=False)
            if dtype != DATETIME:
                parsed = raw.str.strip_chars().cast(dtype, strict=False)
            bad = raw.is_not_null() & parsed.is_null()
            if column in required:
                bad = bad | raw.is_null()
        hit = text.filter(bad).select("row", column).head(1).collect()
        if hit.height:
            row, value = hit.row(0)
            what = "is empty" if value is None else f"value {value!r} is not a valid {dtype}"
            return MimicInputError(f"{path}: column {column}, row {row}: {what}")
    return None


def explain_failure(mimic_dir: str | Path, table: str, err: Exception) -> MimicInputError:
    """Turn a polars error while reading ``table`` into an error that names file and row."""
    path = table_path(mimic_dir, table)
    found = locate_bad_value(mimic_dir, table)
    if found is not None:
        return found
    return MimicInputError(f"{path}: cannot read table {table}: {err}")


def read_table(mimic_dir: str | Path, table: str) -> pl.DataFrame:
    """Read a small table eagerly, validated: types parse and required cells are present.

    Args:
        mimic_dir: Folder with the MIMIC-III CSV files.
        table: Table name, a key of :data:`TABLES` (meant for the small tables).

    Returns:
        The table with the columns of ``TABLES[table]``, lowercase.

    Raises:
        MimicInputError: Naming file, column and row for any bad or missing value.
    """
    lf = scan_table(mimic_dir, table)
    try:
        df = lf.collect()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise explain_failure(mimic_dir, table, err) from err
    for column in REQUIRED_NONEMPTY.get(table, ()):
        nulls = df.get_column(column).is_null()
        if nulls.any():
            row = int(nulls.arg_true()[0]) + 1
            path = table_path(mimic_dir, table)
            raise MimicInputError(f"{path}: column {column}, row {row}: is empty")
    return df


def file_fingerprint(path: str | Path) -> dict[str, object]:
    """Return the byte size and sha256 of a file, reading it in 16 MiB blocks."""
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}
