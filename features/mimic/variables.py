"""The 17 clinical variables of the in-hospital-mortality grid and how raw values are cleaned.

The definitions live in the package data file ``variables.json`` (this project's own
format, derived from the facts in the mimic3-benchmarks resources): for each variable its
channel name, the MIMIC-III item ids that feed it (and which table they link to), the
cleaning rule, the normal value used before anything has been observed, the categorical
values in one-hot order, and plausible ranges. The ranges are recorded but not applied,
because mimic3-benchmarks reads them and then does not use them either.

Cleaning follows what mimic3-benchmarks actually does to ``VALUE`` (rule names in the table):

- ``bp_systolic`` / ``bp_diastolic``: ``"120/80"`` strings give the first / second number.
- ``capillary_refill``: "Normal <3 secs" and "Brisk" give 0, "Abnormal >3 secs" and
  "Delayed" give 1, anything else is dropped.
- ``fio2``: divided by 100 unless the unit mentions torr. The benchmark's released code
  divides every non-torr value (its ``v > 1`` test is bypassed on Python 3), so we do too.
- ``lab_numeric`` (glucose, pH): values that are not plain unsigned decimals are dropped.
- ``spo2``: as ``lab_numeric``, then values <= 1 are multiplied by 100.
- ``temperature``: values >= 79 are taken as Fahrenheit and converted to Celsius (the
  benchmark's unit-string test can never match, so only this threshold acts).
- ``weight``: ounces (unit or item label) divided by 16, then ounces and pounds times
  0.453592 to give kilograms.
- ``height``: inches (unit or item label) times 2.54, rounded half to even.
- ``numeric`` (heart rate, respiratory rate, mean BP): parsed as a number.
- ``category`` (GCS items): kept only if the text is one of the variable's categories.

Text that pandas reads as missing (``NA``, ``None``, ``NULL``, ...) is missing here too,
because the benchmark re-reads its intermediate CSVs with pandas.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

import polars as pl

#: Strings pandas' ``read_csv`` turns into NaN by default.
PANDAS_NA = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
)

#: Rules whose cleaned numeric value orders duplicates at the same chart time; for the
#: others the benchmark sorts the raw text (it never converts it before de-duplicating).
NUMERIC_KEY_RULES = (
    "bp_systolic",
    "bp_diastolic",
    "capillary_refill",
    "fio2",
    "lab_numeric",
    "spo2",
    "temperature",
    "weight",
    "height",
)

_UNSIGNED_DECIMAL = r"^(\d+(\.\d*)?|\.\d+)$"


@dataclass(frozen=True)
class Variable:
    """One clinical variable (one channel of the 17) and its MIMIC-III items."""

    channel: str
    name: str
    kind: str
    normal: str
    clean: str
    itemids: tuple[int, ...]
    item_tables: tuple[str, ...]
    label_units: tuple[str, ...]
    categories: tuple[str, ...] = ()

    @property
    def is_categorical(self) -> bool:
        """Whether the variable is one-hot encoded in the grid."""
        return self.kind == "categorical"

    @property
    def normal_code(self) -> float:
        """The normal value as stored in the value array: a number or a category index."""
        if self.is_categorical:
            return float(self.categories.index(self.normal))
        return float(self.normal)


@cache
def load_variables() -> tuple[Variable, ...]:
    """Read the 17 variables from the package data, in grid channel order."""
    text = resources.files("features.mimic").joinpath("variables.json").read_text("utf-8")
    doc = json.loads(text)
    out = []
    for entry in doc["variables"]:
        items = entry["items"]
        out.append(
            Variable(
                channel=entry["channel"],
                name=entry["name"],
                kind=entry["kind"],
                normal=entry["normal"],
                clean=entry["clean"],
                itemids=tuple(int(i["itemid"]) for i in items),
                item_tables=tuple(i["table"] for i in items),
                label_units=tuple(i["label_unit"] for i in items),
                categories=tuple(entry.get("categories", ())),
            )
        )
    if len(out) != 17:
        raise ValueError(f"variables.json must define 17 variables, found {len(out)}")
    return tuple(out)


def channel_names() -> list[str]:
    """The 76 grid column names, in the benchmark's order.

    Value columns first (a categorical variable gives one ``"channel->value"`` column per
    category), then one ``"mask->channel"`` column per variable.
    """
    names: list[str] = []
    for var in load_variables():
        if var.is_categorical:
            names.extend(f"{var.channel}->{value}" for value in var.categories)
        else:
            names.append(var.channel)
    names.extend(f"mask->{var.channel}" for var in load_variables())
    return names


def normalised_columns() -> list[bool]:
    """For each of the 76 columns, whether it is z-scored (continuous values only)."""
    return ["->" not in name for name in channel_names()]


def item_frame() -> pl.DataFrame:
    """One row per item id: variable index, cleaning rule and label-implied unit."""
    rows = {"itemid": [], "var": [], "rule": [], "label_unit": []}
    for index, var in enumerate(load_variables()):
        for itemid, unit in zip(var.itemids, var.label_units, strict=True):
            rows["itemid"].append(itemid)
            rows["var"].append(index)
            rows["rule"].append(var.clean)
            rows["label_unit"].append(unit)
    return pl.DataFrame(
        rows,
        schema={"itemid": pl.Int64, "var": pl.Int8, "rule": pl.String, "label_unit": pl.String},
    )


def category_frame() -> pl.DataFrame:
    """One row per (variable, category text) with the category's one-hot index."""
    rows = {"var": [], "value": [], "code": [], "text_rank": []}
    for index, var in enumerate(load_variables()):
        if var.clean != "category":
            continue
        # Rank of the text among the variable's categories in Python's string order, the
        # order the benchmark sorts duplicate values in.
        text_order = sorted(var.categories)
        for code, value in enumerate(var.categories):
            rows["var"].append(index)
            rows["value"].append(value)
            rows["code"].append(float(code))
            rows["text_rank"].append(float(text_order.index(value)))
    schema = {"var": pl.Int8, "value": pl.String, "code": pl.Float64, "text_rank": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def clean_values(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Add the cleaned value ``val`` and the duplicate-ordering keys to mapped events.

    Args:
        lf: Events with ``value``, ``valueuom``, ``var``, ``rule`` and ``label_unit``.

    Returns:
        The events with ``val`` (Float64; a category index for categorical variables) and
        the duplicate-ordering keys ``key_a`` and ``key_b``, keeping only rows whose
        cleaned value is present.
    """
    raw = pl.col("value")
    uom = pl.col("valueuom").fill_null("").str.to_lowercase()
    rule = pl.col("rule")
    unit = pl.col("label_unit")
    number = raw.str.strip_chars().cast(pl.Float64, strict=False)
    decimal = pl.when(raw.str.contains(_UNSIGNED_DECIMAL)).then(number)
    slash = raw.str.contains("/")
    pair = raw.str.extract_groups(r"^(\d+)/(\d+)$")
    systolic = pl.when(slash).then(pair.struct.field("1").cast(pl.Float64)).otherwise(number)
    diastolic = pl.when(slash).then(pair.struct.field("2").cast(pl.Float64)).otherwise(number)
    crr = (
        pl.when(raw.is_in(["Normal <3 secs", "Brisk"]))
        .then(pl.lit(0.0))
        .when(raw.is_in(["Abnormal >3 secs", "Delayed"]))
        .then(pl.lit(1.0))
    )
    fio2 = pl.when(uom.str.contains("torr", literal=True)).then(number).otherwise(number / 100.0)
    spo2 = pl.when(decimal <= 1.0).then(decimal * 100.0).otherwise(decimal)
    temp = pl.when(number >= 79.0).then((number - 32.0) * 5.0 / 9.0).otherwise(number)
    ounces = uom.str.contains("oz", literal=True) | (unit == "oz")
    pounds = ounces | uom.str.contains("lb", literal=True) | (unit == "lb")
    weight_oz = pl.when(ounces).then(number / 16.0).otherwise(number)
    weight = pl.when(pounds).then(weight_oz * 0.453592).otherwise(weight_oz)
    inches = uom.str.contains("in", literal=True) | (unit == "in")
    height = pl.when(inches).then((number * 2.54).round(0, mode="half_to_even")).otherwise(number)
    val = (
        pl.when(rule == "bp_systolic")
        .then(systolic)
        .when(rule == "bp_diastolic")
        .then(diastolic)
        .when(rule == "capillary_refill")
        .then(crr)
        .when(rule == "fio2")
        .then(fio2)
        .when(rule == "lab_numeric")
        .then(decimal)
        .when(rule == "spo2")
        .then(spo2)
        .when(rule == "temperature")
        .then(temp)
        .when(rule == "weight")
        .then(weight)
        .when(rule == "height")
        .then(height)
        .when(rule == "category")
        .then(pl.col("code"))
        .otherwise(number)
    )
    # Duplicate values at one chart time are ordered as the benchmark sorts them: by the
    # cleaned number, or by the raw text. Text is turned into two numbers that sort like
    # it (its first 12 UTF-8 bytes, 6 per number), so the keys hold no strings; the GCS
    # texts, which can be longer, use their precomputed rank instead.
    hexed = raw.str.encode("hex").str.slice(0, 24).str.pad_end(24, "0")
    text_hi = hexed.str.slice(0, 12).str.to_integer(base=16).cast(pl.Float64)
    text_lo = hexed.str.slice(12, 12).str.to_integer(base=16).cast(pl.Float64)
    numeric_key = rule.is_in(list(NUMERIC_KEY_RULES))
    category = rule == "category"
    return (
        lf.filter(raw.is_not_null() & ~raw.is_in(list(PANDAS_NA)))
        .join(category_frame().lazy(), on=["var", "value"], how="left")
        .with_columns(val=val)
        .filter(pl.col("val").is_not_null() & pl.col("val").is_not_nan())
        .with_columns(
            key_a=pl.when(numeric_key)
            .then(pl.col("val"))
            .when(category)
            .then(pl.col("text_rank"))
            .otherwise(text_hi),
            key_b=pl.when(numeric_key | category).then(pl.lit(0.0)).otherwise(text_lo),
        )
        .drop("code", "text_rank")
    )
