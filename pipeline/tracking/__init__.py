"""All MLflow calls of the project, in one place.

* Store: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<cwd>/mlflow.db`` (MLflow 3 has
  no file store by default). For a sqlite store, new experiments keep their artifacts in
  ``mlartifacts/`` beside the database file, so one folder holds a whole local store.
* mlflow is imported lazily inside each function: importing this module stays cheap, and
  callers that also use Prefect can import prefect first (Prefect's logging loses its
  formatting when ``mlflow.pytorch`` is imported before it).
* Patient data never goes into MLflow params, metrics or tags: every key and value passes
  :func:`check_no_patient_data`, which refuses identifier-like keys (subject_id, hadm_id,
  icustay_id, stay_id, patient...), string values that mention an identifier column, and
  long sequences or arrays (which look like per-patient data rather than configuration).
  Experiment and run names are checked the same way. Per-patient outputs belong in the
  owner-only report files (:mod:`pipeline.report`), not in the tracking store.
* Models are logged as weights plus config, never as a pickled object: the state dict
  (``torch.save`` of tensors only, read back with ``torch.load(weights_only=True)``) and the
  :class:`rank1.models.ModelSpec` as JSON, rebuilt through :func:`rank1.models.build`. They
  are MLflow logged models all the same (pyfunc "models from code", see
  :mod:`pipeline.mlflow_model`), so they show under the run's Models and can be registered.
  Runs whose model was logged in the old pickle format are refused, not loaded.
* A local sqlite store is created once per process under a lock file beside the database
  (two first runs at once would otherwise both create its tables and one would fail), as
  owner-only files: ``mlflow.db`` 0600 and ``mlartifacts/`` 0700 when this module creates
  them; artifacts it logs are written 0600 in 0700 folders (they include weights trained on
  patient data). A database or folder the user made is never re-permissioned.
* A run's logged model can be registered in the MLflow Model Registry
  (:func:`register_model`), an alias moved to a version (:func:`promote`) and a
  ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI resolved (:func:`resolve`) to a
  :class:`ModelVersionRef`, from which the model and the JSON documents logged with it
  (:func:`load_model_document`) are read the same way as from a run.
* MLflow's own errors (an unknown run, an unreachable server, a missing artifact) leave the
  public functions here as one :class:`TrackingError` with a one-line message, so callers
  catch one documented type instead of MLflow's.
"""

from __future__ import annotations

from pipeline.tracking.errors import TrackingError, TrackingNotFoundError
from pipeline.tracking.guard import (
    MAX_SEQUENCE_LENGTH,
    PATIENT_ID_MARKERS,
    check_no_patient_data,
    flatten_params,
)
from pipeline.tracking.models import (
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    PROJECT_DISTRIBUTION,
    PYFUNC_CODE,
    SPEC_ARTIFACT,
    SPEC_FILE,
    WEIGHTS_ARTIFACT,
    WEIGHTS_FILE,
    ModelArtifactError,
    ModelSource,
    StoredDocument,
    StoredModel,
    load_model,
    load_model_document,
    load_stored_model,
    log_model,
    logged_model_id,
    pip_requirements,
    read_model_files,
    write_model_documents,
    write_model_files,
)
from pipeline.tracking.registry import (
    ACCEPTED_URIS,
    CHAMPION,
    ModelVersionRef,
    RegistryError,
    alias_holder,
    check_registered_name,
    parse_model_uri,
    promote,
    promote_if_better,
    register_model,
    resolve,
    run_versions,
)
from pipeline.tracking.runs import (
    experiment_id,
    has_artifact,
    load_dict,
    log_artifact,
    log_dict,
    log_figure,
    log_metrics,
    log_params,
    resume_run,
    run_metrics,
    run_params,
    start_run,
)
from pipeline.tracking.status import (
    HOST_TAG,
    PID_TAG,
    PROCESS_START_TAG,
    RESUME_KEY_TAG,
    ProcessId,
    fail_stale_runs,
    killed_on_interrupt,
    process_alive,
    process_tags,
    this_process,
)
from pipeline.tracking.store import (
    ARTIFACT_DIR_NAME,
    DEFAULT_DB_NAME,
    default_artifact_location,
    tracking_uri,
)

__all__ = [
    "ACCEPTED_URIS",
    "ARTIFACT_DIR_NAME",
    "CHAMPION",
    "DEFAULT_DB_NAME",
    "HOST_TAG",
    "MAX_SEQUENCE_LENGTH",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "ModelArtifactError",
    "ModelSource",
    "ModelVersionRef",
    "PATIENT_ID_MARKERS",
    "PID_TAG",
    "PROCESS_START_TAG",
    "PROJECT_DISTRIBUTION",
    "PYFUNC_CODE",
    "ProcessId",
    "RESUME_KEY_TAG",
    "RegistryError",
    "SPEC_ARTIFACT",
    "SPEC_FILE",
    "StoredDocument",
    "StoredModel",
    "TrackingError",
    "TrackingNotFoundError",
    "WEIGHTS_ARTIFACT",
    "WEIGHTS_FILE",
    "alias_holder",
    "check_no_patient_data",
    "check_registered_name",
    "default_artifact_location",
    "experiment_id",
    "fail_stale_runs",
    "flatten_params",
    "has_artifact",
    "killed_on_interrupt",
    "load_dict",
    "load_model",
    "load_model_document",
    "load_stored_model",
    "log_artifact",
    "log_dict",
    "log_figure",
    "log_metrics",
    "log_model",
    "log_params",
    "logged_model_id",
    "parse_model_uri",
    "pip_requirements",
    "process_alive",
    "process_tags",
    "promote",
    "promote_if_better",
    "read_model_files",
    "register_model",
    "resolve",
    "resume_run",
    "run_metrics",
    "run_params",
    "run_versions",
    "start_run",
    "this_process",
    "tracking_uri",
    "write_model_documents",
    "write_model_files",
]
