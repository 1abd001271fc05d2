"""Readers for the raw MIMIC-III tables as PhysioNet ships them.

Each table is found as ``NAME.csv`` or ``NAME.csv.gz`` (file name in any case) and read
lazily with polars, with explicit dtypes for the columns the pipeline uses and column
names normalised to lowercase (full MIMIC-III has UPPERCASE headers, the demo lowercase).

Bad input fails with a :class:`MimicInputError` whose message is one line naming the file
and, where it applies, the line number (the physical line in the file; the header is line
1) and the column, and what was expected: a missing or doubled table, a missing or
duplicated column, an event table without rows, a value that does not parse, an empty
required cell, a stray quote, a row with too many fields, bytes that are not UTF-8, a
truncated gzip stream. The message never quotes a row; it quotes at most the one
offending value, shortened, and never the value of an identifier column
(:data:`IDENTIFIER_COLUMNS`). Polars' own error text quotes whole rows, so it is never
passed on, neither in the message nor as the exception's cause (Prefect logs tracebacks).

What a reading requires beyond the dtypes is declared per extraction mode in a
:class:`TableRules`: :data:`TRAINING_RULES` (every column of :data:`TABLES` present, the
cells of :data:`REQUIRED_NONEMPTY` filled) and :data:`SCORING_RULES`, for an export of
patients who may still be in hospital: the outcome columns of :data:`OUTCOME_COLUMNS` may
be absent (read as all null) and DISCHTIME may be empty.

Finding the bad line is the slow path, run only after a fast polars read has failed: a
row-by-row pass with the ``csv`` module (:func:`diagnose_table`).
"""

from __future__ import annotations

import csv
import gzip
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
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
    "D_ICD_DIAGNOSES": {"icd9_code": pl.String},
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
    "D_ICD_DIAGNOSES": ("icd9_code",),
}

#: The outcome columns: an export of patients still in hospital may not carry them at all
#: (a hospital's scoring export has no death dates), so scoring reads an absent one as
#: all null. Training needs them for the label and keeps requiring them.
OUTCOME_COLUMNS: dict[str, frozenset[str]] = {
    "PATIENTS": frozenset({"dod"}),
    "ADMISSIONS": frozenset({"deathtime"}),
}


@dataclass(frozen=True)
class TableRules:
    """What one extraction mode requires of the tables, beyond the dtypes of :data:`TABLES`.

    Attributes:
        optional: Per table, columns that may be absent from the header; an absent one is
            read as a column of nulls of its dtype (everything downstream treats it as
            empty cells).
        required_nonempty: Per table, columns that must hold a value on every row.
    """

    optional: Mapping[str, frozenset[str]] = field(default_factory=dict)
    required_nonempty: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: REQUIRED_NONEMPTY
    )

    def optional_columns(self, table: str) -> frozenset[str]:
        """Columns of ``table`` that may be absent."""
        return self.optional.get(table, frozenset())

    def required_columns(self, table: str) -> tuple[str, ...]:
        """Columns of ``table`` that must not be empty."""
        return self.required_nonempty.get(table, ())


#: Training (the in-hospital-mortality label): every column present, as mimic3-benchmarks.
TRAINING_RULES = TableRules()
#: Scoring new patients: no outcome columns needed, and DISCHTIME is empty while the
#: patient is still in hospital (ICUSTAYS OUTTIME and LOS may be empty in both modes).
SCORING_RULES = TableRules(
    optional=OUTCOME_COLUMNS,
    required_nonempty={
        **REQUIRED_NONEMPTY,
        "ADMISSIONS": tuple(c for c in REQUIRED_NONEMPTY["ADMISSIONS"] if c != "dischtime"),
    },
)

EVENT_TABLES = ("CHARTEVENTS", "LABEVENTS", "OUTPUTEVENTS")

#: Columns whose values identify a patient, an admission or a stay: an error message
#: names the column and the line, never the value.
IDENTIFIER_COLUMNS = frozenset({"row_id", "subject_id", "hadm_id", "icustay_id"})

#: The longest value an error message quotes; longer ones are cut.
QUOTED_VALUE_CHARS = 20

# One CSV field as polars reads it: quoted (a doubled quote inside stands for one quote,
# newlines allowed) or unquoted (no quote, comma or line break).
_FIELD = re.compile(r'"(?:[^"]|"")*"|[^,"\r\n]*')
_LINE_END = re.compile(r"\r?\n?")
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
_DATETIME_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


class MimicInputError(ValueError):
    """A raw MIMIC-III table is missing, incomplete or does not parse."""


def table_path(mimic_dir: str | Path, table: str) -> Path:
    """Return the file that holds ``table`` in ``mimic_dir``.

    Args:
        mimic_dir: Folder with the MIMIC-III CSV files.
        table: Table name, e.g. ``"CHARTEVENTS"``.

    Returns:
        The ``.csv`` or ``.csv.gz`` file (file-name case ignored).

    Raises:
        MimicInputError: If the folder or the table is missing, or if the table is there
            twice (``.csv`` beside ``.csv.gz``, or two letter cases): picking one would
            silently ignore the other, which may be the one the user meant.
    """
    folder = Path(mimic_dir)
    if not folder.is_dir():
        raise MimicInputError(f"{folder}: MIMIC-III folder does not exist")
    wanted = {table.lower() + ".csv", table.lower() + ".csv.gz"}
    found = sorted(p for p in folder.iterdir() if p.name.lower() in wanted and p.is_file())
    if len(found) > 1:
        names = " and ".join(p.name for p in found)
        raise MimicInputError(
            f"{folder}: table {table} is there more than once ({names}); keep one of them"
        )
    if not found:
        raise MimicInputError(
            f"{folder}: table {table} not found (expected {table}.csv or .csv.gz)"
        )
    return found[0]


def _open_binary(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _split_line(line: str) -> list[str]:
    """The fields of one CSV line (quotes removed), read leniently."""
    return next(csv.reader([line]), [])


def read_header(path: str | Path) -> list[str]:
    """Return the column names in the first line of a CSV(.gz) file, as written.

    Only the first line is decoded, so a bad byte further down is reported where it is
    (by :func:`diagnose_table`), not as an unreadable header.

    Raises:
        MimicInputError: If the file is empty, not gzip when named .gz, cut short, or if
            the header line is not UTF-8.
    """
    path = Path(path)
    try:
        with _open_binary(path) as handle:
            raw = handle.readline()
    except (OSError, EOFError, zlib.error) as err:
        raise MimicInputError(f"{path}: cannot read the header ({err})") from None
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MimicInputError(f"{path}: line 1 (header): not valid UTF-8") from None
    if not line.strip():
        raise MimicInputError(f"{path}: file is empty (no header line)")
    return [name.strip() for name in _split_line(line.rstrip("\r\n"))]


def has_data_rows(path: str | Path) -> bool:
    """Whether a CSV(.gz) file has a non-blank line after its header (reads a few lines).

    Raises:
        MimicInputError: If the file cannot be read (e.g. a gzip stream cut short).
    """
    path = Path(path)
    try:
        with _open_binary(path) as handle:
            handle.readline()
            return any(line.strip() for line in handle)
    except (OSError, EOFError, zlib.error) as err:
        raise MimicInputError(f"{path}: cannot read the file ({err})") from None


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
        ) from None


def _column_map(
    path: Path, table: str, columns: list[str], optional: frozenset[str] = frozenset()
) -> tuple[dict[str, str], list[str]]:
    """Map each wanted lowercase column to its name in the file's header.

    Args:
        path: The table's file.
        table: Table name, for the message.
        columns: The wanted columns, lowercase.
        optional: Wanted columns that may be absent (left out of the map then).

    Returns:
        ``(names, header)``: the present wanted columns' names as written, and the whole
        header.

    Raises:
        MimicInputError: If a column that is not optional is missing, or a name appears
            twice (letter case ignored, since names are normalised to lowercase).
    """
    header = read_header(path)
    seen: set[str] = set()
    for name in header:
        if name.lower() in seen:
            raise MimicInputError(f"{path}: line 1 (header): column {name} appears twice")
        seen.add(name.lower())
    lower = {name.lower(): name for name in header}
    missing = [c for c in columns if c not in lower and c not in optional]
    if missing:
        raise MimicInputError(
            f"{path}: table {table} lacks column(s) {', '.join(missing)} "
            f"(header has: {', '.join(header)})"
        )
    return {c: lower[c] for c in columns if c in lower}, header


def check_table(mimic_dir: str | Path, table: str, *, rules: TableRules = TRAINING_RULES) -> Path:
    """Cheap checks of one table before any work: file, header, and rows for event tables.

    Reads only the first lines of the file.

    Args:
        mimic_dir: Folder with the MIMIC-III CSV files.
        table: Table name, a key of :data:`TABLES`.
        rules: Which columns may be absent (see :class:`TableRules`).

    Returns:
        The table's file.

    Raises:
        MimicInputError: If the table is missing or doubled, its header is unreadable,
            lacks a column or names one twice, or an event table has no rows (a grid
            built from it would silently hold only normal values).
    """
    path = table_path(mimic_dir, table)
    _column_map(path, table, list(TABLES[table]), rules.optional_columns(table))
    if table in EVENT_TABLES and not has_data_rows(path):
        raise MimicInputError(f"{path}: table {table} has a header but no rows")
    return path


def scan_table(
    mimic_dir: str | Path,
    table: str,
    *,
    parse_dates: bool = True,
    all_columns: bool = False,
    rules: TableRules = TRAINING_RULES,
) -> pl.LazyFrame:
    """Lazily scan ``table`` with explicit dtypes and lowercase column names.

    Only the columns in :data:`TABLES` are parsed; every other column is read as text and
    dropped straight away (projection pushdown keeps it from being materialised).

    Args:
        mimic_dir: Folder with the MIMIC-III CSV files.
        table: Table name, a key of :data:`TABLES`.
        parse_dates: Parse timestamp columns now; ``False`` leaves them as text for
            :func:`parse_datetimes` after the rows have been filtered.
        all_columns: Keep the unused columns too (as text, after the used ones).
        rules: Which columns may be absent (see :class:`TableRules`); an absent one is
            a column of nulls.

    Returns:
        A LazyFrame with exactly the columns of ``TABLES[table]``, lowercase.

    Raises:
        MimicInputError: If the table or one of its columns that is not optional is
            missing.
    """
    path = table_path(mimic_dir, table)
    schema = TABLES[table]
    names, header = _column_map(path, table, list(schema), rules.optional_columns(table))
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
    used = [
        pl.col(names[c]).alias(c) if c in names else _absent(c, dtype)
        for c, dtype in schema.items()
    ]
    if all_columns:
        used += [pl.col(name) for name in header if name not in names.values()]
    lf = lf.select(used)
    return parse_datetimes(lf, table) if parse_dates else lf


def _absent(column: str, dtype: pl.DataType) -> pl.Expr:
    """An optional column the file lacks: all null, as text where timestamps are text."""
    return pl.lit(None, pl.String if dtype == DATETIME else dtype).alias(column)


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


class _Problem(Exception):
    """The first bad line of a table, raised inside :func:`diagnose_table`."""

    def __init__(self, line: int, index: int | None, what: str) -> None:
        super().__init__(what)
        self.line = line
        self.index = index  # position of the column in the header, if known
        self.column: str | None = None
        self.what = what


def _quote(value: str) -> str:
    """A value for an error message: cut to :data:`QUOTED_VALUE_CHARS` characters."""
    if len(value) > QUOTED_VALUE_CHARS:
        value = value[:QUOTED_VALUE_CHARS] + "..."
    return repr(value)


def _bad_field(record: str) -> int | None:
    """Index of the first field of a raw record that is not well-formed CSV, or None."""
    position, index = 0, 0
    while True:
        position = _FIELD.match(record, position).end()
        if _LINE_END.fullmatch(record, position):
            return None
        if record[position] != ",":
            return index
        position += 1
        index += 1


def _field_index(partial: str) -> int | None:
    """Index of the field in which a partial record ends (None if it cannot be told)."""
    try:
        return max(len(next(csv.reader([partial]), [""])) - 1, 0)
    except csv.Error:
        return None


def _value_problem(column: str, dtype: pl.DataType, value: str, required: bool) -> str | None:
    """What is wrong with one cell of a used column, or None; never quotes an identifier."""
    if value == "":
        return "is empty" if required else None
    if dtype == pl.String:
        return None
    if dtype == DATETIME:
        ok = _DATETIME_SHAPE.fullmatch(value) is not None
        if ok:
            try:
                datetime.strptime(value, DATETIME_FORMAT)
            except ValueError:
                ok = False
        expected = "a time as YYYY-MM-DD HH:MM:SS"
    elif dtype == pl.Int64:
        ok = _INTEGER.fullmatch(value) is not None
        expected = "an integer"
    else:
        try:
            float(value)
            ok = True
        except ValueError:
            ok = False
        expected = "a number"
    if ok:
        return None
    if column in IDENTIFIER_COLUMNS:
        return f"not {expected}"
    return f"value {_quote(value)} is not {expected}"


def _decoded_lines(handle, pending: list[str]) -> Iterator[str]:
    """Physical lines of a binary file as text, each kept in ``pending`` for its record."""
    for number, raw in enumerate(handle, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            partial = "".join(pending) + raw[: err.start].decode("utf-8", "replace")
            raise _Problem(number, _field_index(partial), "not valid UTF-8") from None
        pending.append(text)
        yield text


def _first_problem(path: Path, table: str, required: tuple[str, ...]) -> _Problem | None:
    """Read ``path`` record by record and return its first bad line, or None."""
    pending: list[str] = []
    with _open_binary(path) as handle:
        reader = csv.reader(_decoded_lines(handle, pending), strict=True)
        header = [name.strip().lower() for name in next(reader, [])]
        pending.clear()
        try:
            _check_records(reader, pending, header, table, required)
        except _Problem as problem:
            if problem.index is not None and problem.index < len(header):
                problem.column = header[problem.index]
            return problem
    return None


def _check_records(
    reader, pending: list[str], header: list[str], table: str, required_columns: tuple[str, ...]
) -> None:
    """Raise :class:`_Problem` at the first bad record after the header."""
    schema = TABLES[table]
    required = set(required_columns)
    used = [(header.index(c), c, dtype) for c, dtype in schema.items() if c in header]
    while True:
        line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error:
            # A quote that is never closed, or text after a closing quote.
            raise _Problem(line, _bad_field("".join(pending)), "stray or unclosed quote") from None
        raw = "".join(pending)
        pending.clear()
        if not record:
            continue  # a blank line
        index = _bad_field(raw)
        if index is not None:
            raise _Problem(line, index, "stray quote")
        if len(record) != len(header):
            what = f"{len(record)} fields, expected {len(header)} as in the header"
            raise _Problem(line, None, what)
        for position, column, dtype in used:
            what = _value_problem(column, dtype, record[position], column in required)
            if what is not None:
                raise _Problem(line, position, what)


def diagnose_table(
    mimic_dir: str | Path, table: str, *, rules: TableRules = TRAINING_RULES
) -> MimicInputError | None:
    """Find the first bad line of ``table`` (the slow path, after a read has failed).

    Reads the file record by record with the ``csv`` module and checks what polars
    needs: UTF-8, well-formed quoting, as many fields as the header, and, in the columns
    of :data:`TABLES`, values that parse as their dtype and no empty required cell
    (required as ``rules`` says).

    Returns:
        A one-line error naming the file, the line number (the header is line 1) and the
        column, or ``None`` if no bad line was found.
    """
    path = table_path(mimic_dir, table)
    check_gzip_complete(path)
    _column_map(path, table, list(TABLES[table]), rules.optional_columns(table))
    problem = _first_problem(path, table, rules.required_columns(table))
    if problem is None:
        return None
    where = f"line {problem.line}" + (f", column {problem.column}" if problem.column else "")
    return MimicInputError(f"{path}: {where}: {problem.what}")


def explain_failure(
    mimic_dir: str | Path,
    table: str,
    err: BaseException,
    *,
    rules: TableRules = TRAINING_RULES,
) -> MimicInputError:
    """Turn an error while reading ``table`` into one line naming the file and line.

    Polars' message is never used (it quotes rows); an ``OSError`` is a file-system
    message and is kept.
    """
    found = diagnose_table(mimic_dir, table, rules=rules)
    if found is not None:
        return found
    path = table_path(mimic_dir, table)
    reason = str(err) if isinstance(err, OSError) else "it does not parse as CSV"
    return MimicInputError(f"{path}: cannot read table {table}: {reason}")


def read_table(
    mimic_dir: str | Path, table: str, *, rules: TableRules = TRAINING_RULES
) -> pl.DataFrame:
    """Read a small table eagerly, validated: types parse and required cells are present.

    Args:
        mimic_dir: Folder with the MIMIC-III CSV files.
        table: Table name, a key of :data:`TABLES` (meant for the small tables).
        rules: Which columns may be absent and which cells must be filled
            (see :class:`TableRules`).

    Returns:
        The table with the columns of ``TABLES[table]``, lowercase.

    Raises:
        MimicInputError: Naming file, line and column for any bad or missing value.
    """
    # Every column is parsed (not only the used ones) so that a row with more fields than
    # the header fails: polars only checks that when it reads whole rows. The small tables
    # are cheap to read in full; the event tables are not (see the README).
    lf = scan_table(mimic_dir, table, all_columns=True, rules=rules)
    try:
        df = lf.collect().select(list(TABLES[table]))
    except (pl.exceptions.PolarsError, OSError) as err:
        # "from None": the polars error (which quotes rows) must not travel as the cause.
        raise explain_failure(mimic_dir, table, err, rules=rules) from None
    for column in rules.required_columns(table):
        if df.get_column(column).is_null().any():
            raise explain_failure(mimic_dir, table, ValueError(f"empty {column}"), rules=rules)
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
