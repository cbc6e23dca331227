"""The pyfunc MLflow Model, logged the models-from-code way: MLflow stores this file, not a pickle.

The logged model carries tinyllm's own code (TrackedRun.register logs it as code_paths),
so it loads wherever torch and numpy are installed. Serving loads the model package through
tinyllm's safe loader. Input: prompts (a list of strings or a one-column frame); output: their
continuations, or with predict_stream the pieces of text as they are sampled. Params: the fields
of tinyllm.config.SamplingConfig (max_tokens, temperature, top_k, top_p, min_p, seed,
frequency_penalty, presence_penalty), with its defaults and checks, but a request without a
seed draws a fresh one (the signature gives none). A served request is
bounded: at most MAX_TOKENS characters per prompt and REQUEST_SECONDS of generation, so no
request holds a worker for minutes. Served by uvicorn (`mlflow models serve`), generation in
flight stops once uvicorn is told to stop (SIGTERM or Ctrl-C): the request gets a 503, and the
server's graceful shutdown does not wait for it. Every error is an MlflowException, so
MLflow's reply carries no traceback: a bad param is a 400, a failed generation a 500.
"""

import signal
import time

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE
from mlflow.pyfunc import PythonModel

from tinyllm.config import SamplingConfig
from tinyllm.errors import TinyLLMError
from tinyllm.serving.limits import SERVED_MAX_TOKENS as MAX_TOKENS
from tinyllm.serving.limits import SERVED_REQUEST_SECONDS as REQUEST_SECONDS
from tinyllm.serving.limits import fresh_seed


def _server_stopping() -> bool:
    """Whether the uvicorn server we run in has been told to stop (SIGTERM or SIGINT).

    uvicorn handles both signals with a bound method of its Server that sets should_exit and then
    waits for the requests in flight. No handler of ours can chain in front of it: MLflow runs
    predict in a worker thread (where signal.signal is refused), and a single uvicorn process
    loads the model before it installs its handler. So generation reads the flag of whatever
    handler is installed now (getsignal works from any thread).
    """
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return getattr(server, "should_exit", False) is True


def _prompts(model_input) -> list[str]:
    if isinstance(model_input, pd.DataFrame):  # what the signature turns any input into
        return [str(p) for p in model_input.iloc[:, 0].tolist()]
    if isinstance(model_input, str):
        return [model_input]
    return [str(p) for p in model_input]


def settings_for(params: dict | None) -> SamplingConfig:
    """The request's sampling settings; a bad value is MLflow's 400 naming the param."""
    values = dict(params or {})
    if values.get("seed") is None:
        values["seed"] = fresh_seed()
    try:
        settings = SamplingConfig.from_values(values)
    except TinyLLMError as exc:
        raise MlflowException.invalid_parameter_value(str(exc)) from None
    if settings.max_tokens > MAX_TOKENS:
        raise MlflowException.invalid_parameter_value(
            f"max_tokens must be <= {MAX_TOKENS} when served, got {settings.max_tokens}")
    return settings


class TinyLLMModel(PythonModel):
    def load_context(self, context):
        from tinyllm.tracking.discovery import load_model

        self.loaded = load_model(context.artifacts["package"])

    # A DataFrame hint keeps the explicit signature (with its params) that runs.py logs.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        pieces: dict[int, list[str]] = {}
        for index, piece in self._pieces(model_input, params):
            pieces.setdefault(index, []).append(piece)
        return ["".join(pieces.get(i, [])) for i in range(len(_prompts(model_input)))]

    def predict_stream(self, context, model_input: pd.DataFrame, params: dict | None = None):
        """The continuations' pieces as they are sampled, prompt after prompt."""
        for _, piece in self._pieces(model_input, params):
            yield piece

    def _pieces(self, model_input, params):
        try:
            yield from self._generate(model_input, settings_for(params))
        except MlflowException:
            raise
        except Exception as exc:  # MLflow would answer a 400 with our traceback in it
            raise MlflowException(f"generation failed: {type(exc).__name__}: {exc}",
                                  error_code=INTERNAL_ERROR) from None

    def _generate(self, model_input, settings: SamplingConfig):
        deadline = time.monotonic() + REQUEST_SECONDS
        for index, prompt in enumerate(_prompts(model_input)):
            for piece in self.loaded.stream(prompt, settings=settings):
                if _server_stopping():
                    raise MlflowException("the server is shutting down; send the request again "
                                          "once it is back", error_code=TEMPORARILY_UNAVAILABLE)
                if time.monotonic() > deadline:
                    raise MlflowException.invalid_parameter_value(
                        f"the request ran past {REQUEST_SECONDS:g} s; ask for fewer prompts or "
                        "a smaller max_tokens")
                yield index, piece


mlflow.models.set_model(TinyLLMModel())
