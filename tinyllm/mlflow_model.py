"""The pyfunc MLflow Model, logged the models-from-code way: MLflow stores this file, not a pickle.

Serving loads the model package through tinyllm's safe loader. Input: prompts (a list of strings
or a one-column frame); output: their continuations; params: max_tokens, temperature, top_k,
top_p, seed.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

DEFAULTS = {"max_tokens": 200, "temperature": 0.8, "top_k": 0, "top_p": 1.0, "seed": 1337}


def _prompts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):  # what the signature turns any input into
        return [str(p) for p in model_input.iloc[:, 0].tolist()]
    if isinstance(model_input, str):
        return [model_input]
    return [str(p) for p in model_input]


class TinyLLMModel(PythonModel):
    def load_context(self, context):
        from tinyllm.package import load_package

        self.loaded = load_package(context.artifacts["package"])

    # A DataFrame hint keeps the explicit signature (with its params) that tracking.py logs.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        p = {**DEFAULTS, **(params or {})}
        return [self.loaded.generate(prompt, max_new_tokens=int(p["max_tokens"]),
                                     temperature=float(p["temperature"]), top_k=int(p["top_k"]),
                                     top_p=float(p["top_p"]), seed=int(p["seed"]))
                for prompt in _prompts(model_input)]


mlflow.models.set_model(TinyLLMModel())
