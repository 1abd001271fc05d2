"""Per-variable drift (pipeline.drift) on real grids of small synthetic cohorts.

The named 'second-site' shift gives drift with a known truth: vitals and labs charted less
often, mean blood pressure never, venous pH 0.04 lower, temperature charted in Fahrenheit
but converted back by the extraction (so it must not drift).
"""

from __future__ import annotations

import json
import re
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
from pydantic import ValidationError

from features.mimic.extract import extract
from features.mimic.loader import load_manifest
from features.mimic.variables import load_variables
from features.synthetic import generate
from pipeline.drift import (
    BINS,
    DriftReference,
    DriftReferenceError,
    compare,
    fit_drift_reference,
    metric_name,
    psi,
    psi_level,
)

PATIENTS = 300
#: Charted hourly at the base site, about every 3 h at the second site.
VITALS = (
    "Heart Rate",
    "Systolic blood pressure",
    "Diastolic blood pressure",
    "Respiratory rate",
    "Oxygen saturation",
)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Raw grids and channels of the base cohort (seeds 0 and 1) and second-site (seed 0)."""
    root = tmp_path_factory.mktemp("drift")
    out = {}
    for name, seed, shift in [("base", 0, None), ("other", 1, None), ("site", 0, "second-site")]:
        generate(root / name / "mimic", patients=PATIENTS, seed=seed, shift=shift)
        extract(root / name / "mimic", root / name / "features", seed=0, progress=False)
        grid = np.load(root / name / "features" / "grid.npy", allow_pickle=False)
        out[name] = (grid, list(load_manifest(root / name / "features").channels))
    return out


@pytest.fixture(scope="module")
def reference(cohorts) -> DriftReference:
    return fit_drift_reference(*cohorts["base"])


def column(channels: list[str], name: str) -> int:
    return channels.index(name)


# --------------------------------------------------------------------------- the reference


def test_reference_records_every_variable_at_cohort_level(cohorts, reference):
    grid, channels = cohorts["base"]
    assert reference.stays == len(grid) and reference.hours == grid.shape[1]
    assert reference.channels == tuple(channels)
    assert [v.variable for v in reference.variables] == [v.channel for v in load_variables()]
    for var, ref in zip(load_variables(), reference.variables, strict=True):
        mask = grid[:, :, column(channels, f"mask->{var.channel}")] == 1
        assert ref.observed_hours == mask.sum()
        assert ref.charted == pytest.approx(mask.mean())
        assert sum(ref.shares) == pytest.approx(1.0)
        if var.is_categorical:
            assert ref.kind == "categorical" and ref.categories == var.categories
            assert ref.edges == () and len(ref.shares) == len(var.categories)
        else:
            assert ref.kind == "continuous" and ref.categories == ()
            assert 1 <= len(ref.edges) <= BINS - 1
            assert np.all(np.diff(ref.edges) > 0)
            assert len(ref.shares) == len(ref.edges) + 1
    # Nothing per stay: besides the channel names, no list is longer than the most bins or
    # categories a variable has, whatever the cohort size.
    lists = [
        len(v)
        for ref in reference.to_dict()["variables"]
        for v in ref.values()
        if isinstance(v, list)
    ]
    assert max(lists) <= max(BINS, *(len(v.categories) for v in load_variables()))


def test_continuous_shares_are_close_to_deciles_where_values_do_not_tie(reference):
    heart_rate = next(v for v in reference.variables if v.variable == "Heart Rate")
    assert len(heart_rate.edges) == BINS - 1
    # Integer-valued readings tie at the edges, so shares are near but not exactly 0.1.
    assert max(heart_rate.shares) < 0.2 and min(heart_rate.shares) > 0.05


def test_constant_and_never_charted_variables_are_recorded_as_such(cohorts):
    grid, channels = cohorts["base"]
    grid = grid.copy()
    height = column(channels, "Height")
    charted = grid[:, :, column(channels, "mask->Height")] == 1
    grid[:, :, height] = np.where(charted, 170.0, grid[:, :, height])  # constant deciles
    grid[:, :, column(channels, "mask->pH")] = 0.0  # pH never charted in training
    ref = fit_drift_reference(grid, channels)
    by_name = {v.variable: v for v in ref.variables}
    assert by_name["Height"].edges == () and by_name["Height"].shares == (1.0,)
    ph = by_name["pH"]
    assert (ph.observed_hours, ph.charted, ph.edges, ph.shares) == (0, 0.0, (), ())
    assert not ph.observed

    same = compare(ref, grid, channels)
    assert same.variable("Height").psi == pytest.approx(0.0, abs=1e-12)
    assert same.variable("pH").level == "not charted"
    assert not same.variable("pH").charting_changed  # charted in neither: nothing changed

    base = compare(ref, *cohorts["base"])
    ph_now = base.variable("pH")
    assert (ph_now.level, ph_now.psi, ph_now.charting_changed) == ("no reference", None, True)
    assert ph_now in base.major


def test_fit_refuses_a_grid_without_a_variable_column(cohorts):
    grid, channels = cohorts["base"]
    renamed = [("mask->Glucose?" if c == "mask->Glucose" else c) for c in channels]
    with pytest.raises(ValueError, match="'mask->Glucose' is missing"):
        fit_drift_reference(grid, renamed)
    with pytest.raises(ValueError, match="grid must be"):
        fit_drift_reference(grid[:, :, :-1], channels)


# --------------------------------------------------------------------------- the index


def test_psi_is_zero_for_equal_shares_and_finite_for_an_empty_bin():
    shares = np.array([0.2, 0.3, 0.5])
    assert psi(shares, shares) == 0.0
    value = psi(np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.5, 0.5]))
    assert np.isfinite(value) and value > 1.0
    # Symmetric in the two share vectors, as the formula is.
    assert value == pytest.approx(psi(np.array([0.0, 0.5, 0.5]), np.array([0.5, 0.5, 0.0])))


@pytest.mark.parametrize(
    ("value", "level"),
    [(0.0, "stable"), (0.0999, "stable"), (0.1, "moderate"), (0.25, "moderate"), (0.2501, "major")],
)
def test_psi_levels_follow_the_usual_convention(value, level):
    assert psi_level(value) == level


# --------------------------------------------------------------------------- comparing


def test_a_cohort_compared_with_itself_is_stable_everywhere(cohorts, reference):
    report = compare(reference, *cohorts["base"])
    assert report.stays == reference.stays
    assert all(v.psi == pytest.approx(0.0, abs=1e-12) for v in report.variables)
    assert {v.level for v in report.variables} == {"stable"}
    assert not any(v.charting_changed for v in report.variables)
    assert report.major == ()


def test_another_sample_of_the_same_population_has_no_major_drift(cohorts, reference):
    report = compare(reference, *cohorts["other"])
    assert report.major == (), [v.describe() for v in report.major]
    # Mostly stable; height and weight (one reading per stay) are the noisiest.
    stable = [v for v in report.variables if v.level == "stable"]
    assert len(stable) >= len(report.variables) - 3


def test_second_site_drift_is_what_the_shift_planted(cohorts, reference):
    report = compare(reference, *cohorts["site"])
    mbp = report.variable("Mean blood pressure")
    assert (mbp.level, mbp.psi, mbp.observed_hours_now, mbp.charted_now) == (
        "not charted",
        None,
        0,
        0.0,
    )
    assert mbp.charting_changed and mbp in report.major
    assert "not charted" in mbp.describe()

    # Venous pH 0.04 lower (0.8 sd): measured 0.61 here, 0.35-0.82 over 36 seed pairs.
    ph = report.variable("pH")
    assert ph.level == "major" and ph.psi > 0.25

    # Charted about every 3 h instead of hourly: a third as often, flagged.
    for name in VITALS:
        vital = report.variable(name)
        assert vital.charted_now < 0.5 * vital.charted_reference
        assert vital.charting_changed and vital in report.major
    # Labs every 12 h instead of 8 h, glucose every 12 h instead of 6: fewer, not flagged.
    for name in ("pH", "Glucose"):
        lab = report.variable(name)
        assert lab.charted_now < 0.9 * lab.charted_reference
        assert not lab.charting_changed

    # Charted in Fahrenheit and converted back: no drift (measured 0.005, same patients).
    temperature = report.variable("Temperature")
    assert temperature.level == "stable" and not temperature.charting_changed

    assert {v.variable for v in report.major} == {*VITALS, "Mean blood pressure", "pH"}


def test_channels_that_differ_from_the_reference_are_refused(cohorts, reference):
    grid, channels = cohorts["base"]
    swapped = list(channels)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    with pytest.raises(ValueError, match=rf"position 3: {re.escape(repr(channels[4]))} here"):
        compare(reference, grid, swapped)
    with pytest.raises(ValueError, match=r"position 75: '<none>' here, 'mask->pH'"):
        compare(reference, grid[:, :, :-1], channels[:-1])
    with pytest.raises(ValueError, match="grid must be"):
        compare(reference, grid[:, :, :-1], channels)
    with pytest.raises(ValueError, match="24 hours"):
        compare(reference, grid[:, :24], channels)


def test_a_non_finite_charted_value_is_refused_not_binned(cohorts, reference):
    grid, channels = cohorts["base"]
    broken = grid.copy()
    stay, hour = np.argwhere(grid[:, :, column(channels, "mask->Glucose")] == 1)[0]
    broken[stay, hour, column(channels, "Glucose")] = np.nan
    with pytest.raises(ValueError, match="'Glucose' has non-finite values"):
        compare(reference, broken, channels)
    with pytest.raises(ValueError, match="'Glucose' has non-finite values"):
        fit_drift_reference(broken, channels)


def test_report_metrics_are_metric_safe_floats(cohorts, reference):
    report = compare(reference, *cohorts["site"])
    metrics = report.metrics()
    assert all(re.fullmatch(r"drift/[a-z_]+(/[a-z0-9_]+)?", k) for k in metrics), metrics
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["drift/psi/heart_rate"] == report.variable("Heart Rate").psi
    assert metrics["drift/charted/mean_blood_pressure"] == 0.0
    assert "drift/psi/mean_blood_pressure" not in metrics  # no psi: nothing charted
    assert metrics["drift/flagged"] == len(report.major)
    assert metrics["drift/stays"] == report.stays

    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["stays"] == report.stays
    assert set(as_dict["variables"]) == {metric_name(v.channel) for v in load_variables()}
    assert as_dict["variables"]["mean_blood_pressure"]["level"] == "not charted"
    assert as_dict["variables"]["ph"]["variable"] == "pH"


def test_metric_names_have_no_spaces_or_arrows():
    assert metric_name("Heart Rate") == "heart_rate"
    assert metric_name("pH") == "ph"
    assert metric_name("Glascow coma scale eye opening") == "glascow_coma_scale_eye_opening"


# --------------------------------------------------------------------------- serialising


def test_reference_round_trips_through_json(cohorts, reference):
    again = DriftReference.from_dict(json.loads(json.dumps(reference.to_dict())))
    assert again == reference
    assert compare(again, *cohorts["site"]) == compare(reference, *cohorts["site"])


def _edited(reference: DriftReference, path: tuple, value) -> dict:
    data = json.loads(json.dumps(reference.to_dict()))
    target = data
    for part in path[:-1]:
        target = target[part]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"),
    [
        (("stays",), _DELETE, "stays", "Field required"),
        (("stays",), "200", "stays", "integer"),
        (("colour",), 1, "colour", "unknown field"),
        (("variables", 8, "kind"), "ordinal", "variables[8].kind", "continuous"),
        (("variables", 8, "shares", 0), 1.5, "variables[8].shares[0]", "must be <= 1.0, got 1.5"),
        (("variables", 8, "shares"), [0.5, 0.5], "variables[8]", "shares: must have"),
        (("variables", 8, "edges", 1), -1.0, "variables[8]", "strictly increasing"),
        (("variables", 0, "shares"), [0.5, 0.4], "variables[0]", "must sum to 1"),
        (("channels", 75), "mask->PH", "<root>", "no column 'mask->pH'"),
        (("variables", 8, "charted"), 0.5, "<root>", "'Heart Rate' has charted 0.5, but"),
    ],
)
def test_a_bad_reference_dict_is_one_line_naming_the_field(reference, path, value, field, reason):
    with pytest.raises(DriftReferenceError) as caught:
        DriftReference.from_dict(_edited(reference, path, value))
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.field == field and reason in caught.value.reason, message
    assert message.startswith(f"drift reference field {field!r}: ")


def test_a_reference_that_is_not_a_mapping_is_refused():
    with pytest.raises(DriftReferenceError, match="must be a mapping, got list"):
        DriftReference.from_dict([])


def test_reports_and_references_are_frozen(cohorts, reference):
    report = compare(reference, *cohorts["site"])
    with pytest.raises(FrozenInstanceError):
        report.stays = 0  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        report.variables[0].psi = 0.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        reference.stays = 1  # type: ignore[misc]
