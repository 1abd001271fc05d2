import base64
import os
import re
import stat

import numpy as np
import polars as pl
import pytest

from pipeline import plots
from pipeline.calibration import TemperatureScaler
from pipeline.report import build_report_table, write_report
from pipeline.uncertainty import referral_curve

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
