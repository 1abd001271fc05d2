"""The MLflow pyfunc implementation of a logged model ("models from code").

:func:`pipeline.tracking.log_model` records this file as the model's code and the weights
and config files as its artifacts, so the model is a first-class MLflow logged model
(listed under the run's Models, registrable, servable with ``mlflow models serve``) while
nothing is pickled. Loading goes through :func:`pipeline.tracking.read_model_files`:
``torch.load(weights_only=True)`` and a rebuild from the JSON config.

``mlflow.pyfunc.load_model`` runs the copy of this file stored with the model, as it does
for every models-from-code model, so use it only on a store you trust. The project itself
never does: :func:`pipeline.tracking.load_model` reads the two files and nothing else.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class Rank1PyfuncModel(PythonModel):
    """Mixture probabilities of a rank-1 model, deterministic model or deep ensemble."""

    def load_context(self, context: Any) -> None:
        """Rebuild the model from its weights and config artifacts."""
        from pipeline import tracking

        stored = tracking.read_model_files(
            context.artifacts[tracking.WEIGHTS_ARTIFACT], context.artifacts[tracking.SPEC_ARTIFACT]
        )
        self.model = stored.build("cpu")

    # An ndarray hint: MLflow infers no schema from it (a list hint would become a schema of
    # lists) and, unlike no hint, does not warn at every logging.
    def predict(self, context, model_input: np.ndarray, params=None):
        """Mixture probabilities of an untiled batch.

        Args:
            context: MLflow's model context (unused).
            model_input: An array ``(N, ...)`` of inputs (the EHR grid or images).
            params: Optional ``{"num_samples": S}`` (default 1).

        Returns:
            A numpy array ``(N,)`` (binary head: the risk) or ``(N, C)`` (class probabilities).
        """
        import torch

        import rank1
        from pipeline.predict import EVAL_SEED, model_ensemble_size

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        samples = int((params or {}).get("num_samples", 1))
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(EVAL_SEED)  # the project's one evaluation seed: repeatable
            paths = rank1.predict(self.model, x, model_ensemble_size(self.model), samples)
        logits = paths.flatten(0, 1)  # (S * K, N[, C])
        likelihood = "bernoulli" if logits.dim() == 2 else "categorical"
        return rank1.mixture_probs(logits, likelihood).numpy()


mlflow.models.set_model(Rank1PyfuncModel())
