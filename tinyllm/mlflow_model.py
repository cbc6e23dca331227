"""The pyfunc MLflow Model, logged the models-from-code way: MLflow stores this file, not a pickle.

Serving loads the model package through tinyllm's safe loader. Input: prompts (a list of strings
or a one-column frame); output: their continuations; params: max_tokens, temperature, top_k,
top_p, seed.
"""

import warnings

import mlflow
from mlflow.pyfunc import PythonModel

# The signature is given explicitly when logging; MLflow's suggestion to add type hints is noise.
warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")

DEFAULTS = {"max_tokens": 200, "temperature": 0.8, "top_k": 0, "top_p": 1.0, "seed": 1337}


def _prompts(model_input) -> list[str]:
    if hasattr(model_input, "columns"):  # a pandas DataFrame
        return [str(p) for p in model_input.iloc[:, 0].tolist()]
    if isinstance(model_input, str):
        return [model_input]
    return [str(p) for p in model_input]


class TinyLLMModel(PythonModel):
    def load_context(self, context):
        from tinyllm.package import load_package

        self.loaded = load_package(context.artifacts["package"])

    def predict(self, context, model_input, params=None):
        p = {**DEFAULTS, **(params or {})}
        return [self.loaded.generate(prompt, max_new_tokens=int(p["max_tokens"]),
                                     temperature=float(p["temperature"]), top_k=int(p["top_k"]),
                                     top_p=float(p["top_p"]), seed=int(p["seed"]))
                for prompt in _prompts(model_input)]


mlflow.models.set_model(TinyLLMModel())
