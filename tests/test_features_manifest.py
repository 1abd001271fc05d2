"""The typed feature-folder manifest: exact round trip, old folders, one-line errors."""

import json
import shutil

import pytest
from pydantic import ValidationError

from features.mimic.extract import extract
from features.mimic.manifest import (
    MANIFEST_FILE,
    FeatureFolderError,
    FeatureManifest,
    load_manifest,
)


def _raw(folder):
    return json.loads((folder / MANIFEST_FILE).read_text())


def _folder_with(tmp_path, raw):
    """A folder holding only ``manifest.json`` with the given content."""
    folder = tmp_path / "features"
    folder.mkdir()
    (folder / MANIFEST_FILE).write_text(json.dumps(raw, indent=2))
    return folder


def _refusal(folder) -> str:
    with pytest.raises(FeatureFolderError) as info:
        load_manifest(folder)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(folder / MANIFEST_FILE) + ": ")
    return message.removeprefix(str(folder / MANIFEST_FILE) + ": ")


def test_the_model_writes_exactly_the_json_it_read(tiny_ehr_features):
    text = (tiny_ehr_features / MANIFEST_FILE).read_text()
    manifest = load_manifest(tiny_ehr_features)
    assert manifest.to_json() == text
    assert manifest.split.counts.train.stays + manifest.split.counts.val.stays + (
        manifest.split.counts.test.stays
    ) == (manifest.stays)
    assert len(manifest.normaliser.means) == len(manifest.channels) == 76
    assert manifest.total_seconds == _raw(tiny_ehr_features)["timings_s"]["total"]


def test_a_folder_written_before_warnings_were_recorded_still_loads(tmp_path, tiny_ehr_features):
    raw = _raw(tiny_ehr_features)
    del raw["warnings"]  # the schema-1 layout before warnings joined it
    manifest = load_manifest(_folder_with(tmp_path, raw))
    assert manifest.warnings == ()
    assert manifest.channels == load_manifest(tiny_ehr_features).channels


def test_the_manifest_is_frozen(tiny_ehr_features):
    manifest = load_manifest(tiny_ehr_features)
    with pytest.raises(ValidationError):
        manifest.hours = 24
    with pytest.raises(ValidationError):
        manifest.split.seed = 1


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda raw: raw.pop("hours"), "hours: Field required"),
        (lambda raw: raw.update(extra_key=1), "extra_key: Extra inputs are not permitted"),
        (
            lambda raw: raw["split"]["counts"]["train"].update(stays="many"),
            "split.counts.train.stays: Input should be a valid integer",
        ),
        (
            lambda raw: raw["source"]["tables"]["PATIENTS"].pop("sha256"),
            "source.tables.PATIENTS.sha256: Field required",
        ),
        (lambda raw: raw.update(task="sepsis"), "task: Input should be"),
        (
            lambda raw: raw["normaliser"]["stds"].pop(),
            "normaliser: 76 means, 75 stds and 76 flags for 76 channels",
        ),
    ],
)
def test_a_bad_field_is_one_line_naming_it(tmp_path, tiny_ehr_features, change, expected):
    raw = _raw(tiny_ehr_features)
    change(raw)
    assert _refusal(_folder_with(tmp_path, raw)).startswith(expected)


def test_several_bad_fields_are_counted_not_listed(tmp_path, tiny_ehr_features):
    raw = _raw(tiny_ehr_features)
    del raw["hours"], raw["stays"]
    assert _refusal(_folder_with(tmp_path, raw)).endswith("(and 1 more problem)")


def test_another_schema_version_says_re_extract(tmp_path, tiny_ehr_features):
    raw = _raw(tiny_ehr_features)
    raw["schema_version"] = 2
    message = _refusal(_folder_with(tmp_path, raw))
    assert message.startswith("schema_version 2, this code reads 1; re-extract")


def test_not_json_names_line_and_column(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    (folder / MANIFEST_FILE).write_text('{\n  "schema_version": 1,\n  oops\n}')
    assert _refusal(folder).startswith("line 3 column 3: not valid JSON")
    (folder / MANIFEST_FILE).write_text("[1, 2]")
    assert _refusal(folder) == "expected a JSON object, got list"


def test_a_missing_manifest_names_the_file(tmp_path):
    assert _refusal(tmp_path) == "manifest not found (not a feature folder?)"


def test_our_folder_of_another_schema_version_is_replaced(tmp_path, tiny_ehr_features):
    mimic = tiny_ehr_features.parent / "mimic"
    out = tmp_path / "features"
    shutil.copytree(tiny_ehr_features, out)
    raw = _raw(out)
    raw["schema_version"] = 2
    raw["new_part"] = {}
    (out / MANIFEST_FILE).write_text(json.dumps(raw))
    manifest = extract(mimic, out, seed=0, progress=False)
    assert isinstance(manifest, FeatureManifest)
    assert load_manifest(out) == manifest


def test_outdated_reason_checks_settings_then_tables(tmp_path, tiny_ehr_features):
    mimic = tiny_ehr_features.parent / "mimic"
    manifest = load_manifest(tiny_ehr_features)
    settings = {"seed": 0, "val_fraction": 0.15, "test_fraction": 0.15}
    assert manifest.outdated_reason(mimic, **settings) is None
    assert manifest.outdated_reason(mimic, **{**settings, "test_fraction": 0.2}) == (
        "the split settings changed"
    )
    assert manifest.outdated_reason(tmp_path, **settings) == "a source table is missing"
    raw = _raw(tiny_ehr_features)
    del raw["source"]["tables"]["LABEVENTS"]
    fewer = FeatureManifest.model_validate(raw)
    assert fewer.outdated_reason(mimic, **settings) == "the manifest records other source tables"
