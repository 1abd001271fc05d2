import base64
import json
import os
import re
import stat
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline import plots
from pipeline.calibration import TemperatureScaler
from pipeline.provenance import (
    MIN_EVENTS,
    MIN_STAYS,
    UNLIKE_TRAINING_PERCENTILE,
    EpistemicReference,
    Provenance,
    epistemic_reference,
    share_text,
)
from pipeline.report import ID_COLUMNS, build_report_table, read_report_document, write_report
from pipeline.tracking import check_no_patient_data
from pipeline.uncertainty import decompose, default_ranking, referral_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cohort(n=40, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=n)
    true_risk = 1 / (1 + np.exp(-z))
    labels = (rng.random(n) < true_risk).astype(int)
    stays = pl.DataFrame(
        {
            "subject_id": np.arange(1000, 1000 + n),
            "hadm_id": np.arange(5000, 5000 + n),
            "icustay_id": np.arange(9000, 9000 + n),
            "label": labels,
            "true_risk": true_risk,
            "split": ["test"] * n,
        }
    )
    # 4 members; the last 5 stays get members that disagree strongly.
    member_logits = 2.0 * z[None, :] + 0.1 * rng.normal(size=(4, n))
    member_logits[:, -5:] += np.array([[-4.0], [4.0], [-4.0], [4.0]])
    return stays, member_logits


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_build_report_table_columns_and_values():
    stays, logits = cohort()
    table = build_report_table(stays, logits, temperature=2.0, coverage=0.8)
    assert table.columns == [
        "subject_id",
        "hadm_id",
        "icustay_id",
        "risk",
        "risk_low",
        "risk_high",
        "uncertainty_total",
        "uncertainty_aleatoric",
        "uncertainty_epistemic",
        "refer",
        "unlike_training",
        "outcome",
        "true_risk",
    ]
    assert table.height == 40
    assert table["subject_id"].to_list() == stays["subject_id"].to_list()  # row order kept
    # Calibrated risk: mean of sigmoid(logits / T).
    expected = (1 / (1 + np.exp(-logits / 2.0))).mean(axis=0)
    np.testing.assert_allclose(table["risk"].to_numpy(), expected)
    assert (table["risk_low"] <= table["risk"]).all() and (
        table["risk"] <= table["risk_high"]
    ).all()
    total = table["uncertainty_total"].to_numpy()
    parts = table["uncertainty_aleatoric"].to_numpy() + table["uncertainty_epistemic"].to_numpy()
    np.testing.assert_allclose(total, parts, atol=1e-12)
    assert table["refer"].sum() == 8  # 20% of 40
    # The stays whose members disagree are the most epistemically uncertain ones.
    by_mi = build_report_table(stays, logits, TemperatureScaler(2.0), referral_by="epistemic")
    assert by_mi["refer"].to_list()[-5:] == [True] * 5
    assert table["outcome"].to_list() == stays["label"].to_list()


def test_build_report_table_validates_inputs():
    stays, logits = cohort(n=10)
    with pytest.raises(ValueError, match="icustay_id"):
        build_report_table(stays.drop("icustay_id"), logits, 1.0)
    with pytest.raises(ValueError, match="shape"):
        build_report_table(stays, logits[:, :5], 1.0)
    no_outcome = build_report_table(stays.drop("label", "true_risk"), logits, 1.0)
    assert "outcome" not in no_outcome.columns and "true_risk" not in no_outcome.columns


def test_write_report_files_contents_and_permissions(tmp_path):
    stays, logits = cohort()
    table = build_report_table(stays, logits, temperature=1.5)
    out = tmp_path / "reports" / "run1"
    paths = write_report(table, out, title="Test <cohort>", metrics={"auroc": 0.81, "ece": 0.04})

    assert mode(out) == 0o700 and mode(tmp_path / "reports") == 0o700  # each created folder
    assert set(paths) == {"parquet", "csv", "json", "html"}
    for path in paths.values():
        assert mode(path) == 0o600, path
    assert sorted(p.name for p in out.iterdir()) == [
        "report.csv",
        "report.html",
        "report.json",
        "report.parquet",
    ]

    assert pl.read_parquet(paths["parquet"]).equals(table)
    csv = pl.read_csv(paths["csv"])
    assert csv["icustay_id"].to_list() == table["icustay_id"].to_list()
    np.testing.assert_allclose(csv["risk"].to_numpy(), table["risk"].to_numpy())

    page = paths["html"].read_text(encoding="utf-8")
    assert "Test &lt;cohort&gt;" in page  # title escaped
    assert not re.search(r"https?://|<script|<link|@import|url\(", page, re.IGNORECASE)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    assert all(base64.b64decode(img).startswith(PNG_MAGIC) for img in images)
    for column in ("risk_low", "uncertainty_epistemic", "refer"):
        assert f"<dt>{column}</dt>" in page
    assert "0.81" in page and "auroc" in page
    # Cohort table sorted by risk: the highest-risk stay's id appears before the lowest's.
    top = table.sort("risk", descending=True)
    first, last = str(top["icustay_id"][0]), str(top["icustay_id"][-1])
    assert page.index(f'<td class="id">{first}</td>') < page.index(f'<td class="id">{last}</td>')
    assert page.count('<tr class="refer">') == table["refer"].sum()


@pytest.mark.parametrize("existing_mode", [0o755, 0o1777])
def test_write_report_keeps_an_existing_directory_and_replaces_files(tmp_path, existing_mode):
    stays, logits = cohort(n=12)
    table = build_report_table(stays.with_columns(pl.lit(None).alias("label")), logits, 1.0)
    out = tmp_path / "shared"
    out.mkdir()
    os.chmod(out, existing_mode)  # e.g. `.` or a shared 1777 scratch folder
    write_report(table, out)
    paths = write_report(table, out)  # second write replaces atomically
    assert mode(out) == existing_mode  # the user's folder is never re-permissioned
    assert all(mode(path) == 0o600 for path in paths.values())
    assert "No outcomes are known" in paths["html"].read_text()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_plots_write_private_pngs(tmp_path):
    rng = np.random.default_rng(3)
    risk = rng.random(100)
    labels = (rng.random(100) < risk).astype(int)
    logits = np.log(risk / (1 - risk))[None, :] + rng.normal(size=(3, 100))
    figures = {
        "rel.png": lambda p: plots.reliability_figure(risk, labels, path=p),
        "hist.png": lambda p: plots.risk_histogram_figure(risk, labels, path=p),
        "ref.png": lambda p: plots.referral_figure(referral_curve(logits, labels), path=p),
    }
    for name, draw in figures.items():
        fig = draw(tmp_path / name)
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
        assert mode(tmp_path / name) == 0o600
        assert base64.b64decode(plots.figure_base64(fig)).startswith(PNG_MAGIC)


# --------------------------------------------------------------------------- trust


PROVENANCE = Provenance(
    run_id="0123456789abcdef0123456789abcdef",
    model_name="model",
    model_id="m-0123456789abcdef",
    method="rank1",
    posterior="cauchy",
    feature_fingerprint="a1b2c3d4e5f60718",
    split="test",
)


def big_cohort(n=400, members=4, seed=1):
    """A split big enough for its metrics (n >= 200 stays, >= 20 deaths)."""
    stays, logits = cohort(n=n, seed=seed)
    assert stays["label"].sum() >= MIN_EVENTS
    return stays, logits[:members]


def written(tmp_path, stays, logits, threshold=0.01, provenance=PROVENANCE, name="out"):
    table = build_report_table(stays, logits, 1.0, epistemic_threshold=threshold)
    # The ranking the table's refer flags were built with (total entropy for one path).
    ranking = default_ranking(np.asarray(logits).shape[0])
    paths = write_report(table, tmp_path / name, provenance=provenance, referral_by=ranking)
    return table, paths, json.loads(paths["json"].read_text())


def test_provenance_is_the_same_in_html_parquet_and_json(tmp_path):
    stays, logits = cohort(n=50)
    _, paths, document = written(tmp_path, stays, logits)
    expected = PROVENANCE.to_dict()
    assert document["provenance"] == expected
    assert read_report_document(paths["parquet"]) == document
    schema = pq.read_schema(paths["parquet"]).metadata
    assert schema[b"provenance.run_id"] == PROVENANCE.run_id.encode()
    assert schema[b"provenance.model_registry_version"].startswith(b"not registered")
    page = paths["html"].read_text()
    for value in expected.values():
        if value is not None:
            assert f'<td class="id">{value}</td>' in page, value
    assert "not registered" in page  # the registry version does not exist yet (issue 12)
    # Creation time is UTC ISO 8601 and the same everywhere.
    created = datetime.fromisoformat(document["provenance"]["created_at"])
    assert created.utcoffset() == timedelta(0)
    # The CSV stays plain data that any reader parses; its provenance is the sidecar.
    assert pl.read_csv(paths["csv"]).columns == pl.read_parquet(paths["parquet"]).columns
    assert mode(paths["json"]) == 0o600


def test_default_provenance_still_states_the_creation_time(tmp_path):
    stays, logits = cohort(n=12)
    paths = write_report(build_report_table(stays, logits, 1.0), tmp_path / "r")
    document = json.loads(paths["json"].read_text())
    assert document["provenance"]["run_id"] is None
    assert datetime.fromisoformat(document["provenance"]["created_at"]).tzinfo is not None


def test_a_50_stay_split_is_warned_as_too_small(tmp_path):
    stays, logits = cohort(n=50)
    _, paths, document = written(tmp_path, stays, logits)
    assert document["warnings"][0].startswith(f"Small sample: 50 stays (fewer than {MIN_STAYS})")
    assert stays["label"].sum() >= MIN_EVENTS  # the stays alone are too few
    assert [w.split(":")[0] for w in document["warnings"]] == ["Small sample"]
    page = paths["html"].read_text()
    assert '<div class="warnings" role="alert">' in page
    assert "Small sample: 50 stays" in page
    assert read_report_document(paths["parquet"])["warnings"] == document["warnings"]


def test_few_deaths_are_warned_even_in_a_big_split(tmp_path):
    stays, logits = big_cohort()
    few = stays.with_columns(pl.Series("label", [1] * 5 + [0] * (stays.height - 5)))
    _, _, document = written(tmp_path, few, logits)
    assert [w.split(":")[0] for w in document["warnings"]] == ["Few deaths"]


def test_a_deterministic_model_is_warned_and_has_no_flag_values(tmp_path):
    stays, logits = big_cohort(members=1)
    table, paths, document = written(tmp_path, stays, logits, threshold=0.01)
    assert (table["risk_low"] == table["risk_high"]).all()
    assert table["unlike_training"].null_count() == table.height
    assert [w.split(":")[0] for w in document["warnings"]] == ["Deterministic model"]
    assert document["counts"]["n_unlike_training"] is None
    assert "Deterministic model" in paths["html"].read_text()


def test_a_big_enough_rank1_case_has_no_warning(tmp_path):
    stays, logits = big_cohort()
    _, paths, document = written(tmp_path, stays, logits)
    assert document["warnings"] == []
    assert '<div class="warnings"' not in paths["html"].read_text()


def test_unlike_training_uses_the_recorded_percentile(tmp_path):
    stays, logits = big_cohort()
    epistemic = decompose(logits).epistemic
    threshold = float(np.quantile(epistemic, 0.9))
    table, paths, document = written(tmp_path, stays, logits, threshold=threshold)
    assert table["unlike_training"].to_list() == (epistemic > threshold).tolist()
    n_flagged = int((epistemic > threshold).sum())
    assert 0 < n_flagged < table.height
    assert document["counts"]["n_unlike_training"] == n_flagged
    assert share_text(n_flagged, table.height, "flagged") in paths["html"].read_text()
    # A higher recorded percentile flags fewer stays: the flag follows the record.
    higher = build_report_table(stays, logits, 1.0, epistemic_threshold=float(epistemic.max()))
    assert higher["unlike_training"].sum() == 0


def test_without_a_recorded_percentile_the_flag_is_unavailable(tmp_path):
    stays, logits = big_cohort()
    table, paths, document = written(tmp_path, stays, logits, threshold=None)
    assert table["unlike_training"].null_count() == table.height
    assert [w.split(":")[0] for w in document["warnings"]] == [
        "The 'unlike the training population' flag is unavailable"
    ]
    assert "flag is unavailable" in paths["html"].read_text()


def test_epistemic_reference_is_the_95th_percentile_of_the_stays_given():
    _, logits = big_cohort()
    reference = epistemic_reference(logits)
    assert reference.percentile == UNLIKE_TRAINING_PERCENTILE == 95.0
    assert reference.threshold == pytest.approx(np.percentile(decompose(logits).epistemic, 95))
    assert reference.n_stays == logits.shape[1] and reference.split == "val"
    assert EpistemicReference.from_dict(reference.to_dict()) == reference
    assert epistemic_reference(logits[:1]).threshold is None  # deterministic
    assert epistemic_reference(np.repeat(logits[:1], 3, axis=0)).threshold is None


def test_coverage_is_shown_as_counted(tmp_path):
    stays, logits = cohort(n=7)
    table = build_report_table(stays, logits, 1.0, coverage=0.8)
    assert table["refer"].sum() == 2  # ceil(20% of 7)
    page = write_report(table, tmp_path / "r", coverage=0.8)["html"].read_text()
    assert "2 of 7 stays referred for review (29%)" in page
    assert "coverage 80%" not in page


def test_provenance_and_warnings_name_no_patient(tmp_path):
    stays, logits = cohort(n=50)
    _, paths, document = written(tmp_path, stays, logits)
    statement = json.dumps(
        {key: document[key] for key in ("provenance", "warnings", "counts")}
    ).lower()
    identifiers = {str(v) for c in ID_COLUMNS for v in stays[c].to_list()}
    found = set(re.findall(r"\d+", statement)) & identifiers
    assert not found
    assert not any(column in statement for column in ID_COLUMNS)
    check_no_patient_data(document["provenance"], "provenance")
    # The whole sidecar holds no row: no identifier value anywhere in it.
    assert not set(re.findall(r"\d+", paths["json"].read_text())) & identifiers


def test_reliability_figure_accepts_raw_risk_and_multiclass(tmp_path):
    rng = np.random.default_rng(5)
    risk = rng.random(60)
    labels = (rng.random(60) < risk).astype(int)
    fig = plots.reliability_figure(risk, labels, raw=risk**2, path=tmp_path / "rel.png")
    bottom = fig.axes[1]
    assert fig.axes[0].get_ylabel() == "observed share who died"
    assert "predicted risk of death" in bottom.get_xlabel()
    assert sum(int(t.get_text()) for t in bottom.texts) == 60  # per-bin counts shown
    assert [line.get_label() for line in fig.axes[0].lines][1:] == [
        "raw risk",
        "calibrated risk",
    ]
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=30)
    multi = plots.reliability_figure(probs, rng.integers(0, 3, size=30))
    assert multi.axes[0].get_xlabel() == "confidence (top-label probability)"
    with pytest.raises(ValueError, match="binary risk only"):
        plots.reliability_figure(probs, rng.integers(0, 3, size=30), raw=probs)
    hist = plots.risk_histogram_figure(risk, labels)
    names = [text.get_text().split(" ")[0] for text in hist.axes[0].get_legend().get_texts()]
    assert names == ["survived", "died"]
