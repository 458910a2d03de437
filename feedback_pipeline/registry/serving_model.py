"""The model code logged with every challenger (MLflow "models from code"): what consumers of
``models:/feedback_model@champion`` run. It imports only the model's own requirements (MLflow,
pandas, XGBoost or scikit-learn), never ``feedback_pipeline``, so the champion loads wherever
those are installed. MLflow runs this file on load; the fitted estimator is an artifact beside it.
"""

from __future__ import annotations

import pickle

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ProbabilityModel(PythonModel):
    """``predict`` returns ``probability`` (that a prediction is good) for each input row."""

    def load_context(self, context) -> None:
        config = context.model_config
        self.features = list(config["features"])
        path = context.artifacts["estimator"]
        if config["estimator_format"] == "xgboost_json":  # XGBoost's own, version-safe format
            from xgboost import XGBClassifier

            self.estimator = XGBClassifier()
            self.estimator.load_model(path)
        else:  # a scikit-learn pipeline, pickled as scikit-learn's own persistence does
            with open(path, "rb") as file:
                self.estimator = pickle.load(file)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)[self.features].astype("float64")
        return pd.DataFrame({"probability": self.estimator.predict_proba(frame)[:, 1]})


mlflow.models.set_model(ProbabilityModel())
