"""The whole-stay tasks on the MIMIC-III demo equal mimic3-benchmarks' own, sample by sample.

The expected digests were computed from the benchmark's listfiles (commit ea0314c, pandas
2.1.4, run on the same demo copy with upper-cased headers), train and test partitions
together, each sample mapped to its ICUSTAY_ID through the benchmark's episode files, sorted
by stay and hour and written as CSV the way :func:`_digest` writes ours: decompensation
``icustay_id,hour,label``; length of stay ``icustay_id,hour,remaining_hours`` (the
listfile's 6 decimals); phenotyping ``icustay_id`` and the 25 labels in the listfile's
column order. The benchmark's counts are in ../shared/docs/mimic3-notes.md.
"""

from __future__ import annotations

import hashlib

import polars as pl
import pytest

from features.mimic.extract import extract_all
from features.mimic.tasks import phenotype_names

pytestmark = pytest.mark.demo

BENCHMARK = {
    "decompensation": "8fd8bb23237a827232a2ba7a342e8c90bbee2173488d20bfc3fc2b03c220499f",
    "length-of-stay": "776d2e9e694243b73d328aff245a877337a72d7d2e4b2c6005e97ff567b03599",
    "phenotyping": "03080f8493c19ad3ce3e0bcc923c13c4a3b889e2f1efb0a7bc14d4ec7817abf9",
}
#: Positive stays per phenotype in the benchmark's listfiles (train + test), label order.
PHENOTYPE_POSITIVES = (41, 4, 12, 51, 17, 19, 16, 6, 36, 27, 15, 29, 31)
PHENOTYPE_POSITIVES += (49, 47, 12, 17, 11, 2, 16, 10, 28, 31, 38, 21)


@pytest.fixture(scope="module")
def demo_tasks(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-tasks")
    manifests = extract_all(demo_dir, out, progress=False)
    return out, manifests


def _digest(frame: pl.DataFrame) -> str:
    return hashlib.sha256(frame.write_csv().encode()).hexdigest()


def _samples(out, task: str) -> pl.DataFrame:
    return pl.read_parquet(out / task / "samples.parquet").sort("icustay_id", "hour")


def test_counts_are_the_benchmarks(demo_tasks):
    _, manifests = demo_tasks
    # 8,989 + 1,874 / 9,042 + 1,899 / 95 + 18 in the benchmark's own train/test split.
    assert manifests["decompensation"].samples == 10_863
    assert manifests["decompensation"].positives == 456
    assert manifests["length-of-stay"].samples == 10_941
    assert manifests["phenotyping"].samples == 113
    assert manifests["phenotyping"].positives == PHENOTYPE_POSITIVES
    assert manifests["ihm"].stays == 57 and manifests["ihm"].positives == 17


def test_decompensation_samples_and_labels_are_the_benchmarks(demo_tasks):
    out, _ = demo_tasks
    assert _digest(_samples(out, "decompensation")) == BENCHMARK["decompensation"]


def test_length_of_stay_samples_and_targets_are_the_benchmarks(demo_tasks):
    out, _ = demo_tasks
    samples = _samples(out, "length-of-stay")
    text = samples.select(
        "icustay_id",
        "hour",
        pl.col("remaining_hours").map_elements(lambda v: f"{v:.6f}", return_dtype=pl.String),
    )
    assert _digest(text) == BENCHMARK["length-of-stay"]


def test_phenotype_labels_are_the_benchmarks(demo_tasks):
    out, _ = demo_tasks
    samples = pl.read_parquet(out / "phenotyping" / "samples.parquet").sort("icustay_id")
    assert samples.columns[1:] == list(phenotype_names())
    assert _digest(samples) == BENCHMARK["phenotyping"]
