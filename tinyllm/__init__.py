"""tinyllm: a character-level GPT trained, tracked and served through DVC and MLflow."""

from tinyllm.errors import TinyLLMError
from tinyllm.version import __version__


def load_model(uri=None, device: str = "cpu", tracking_uri: str | None = None):
    """A `tinyllm.package.LoadedModel` (generate/stream) for any model the CLI takes, as
    `tinyllm chat --help` lists them (tinyllm.tracking.discovery.MODEL_URI_HELP)."""
    from tinyllm.tracking.discovery import load_model as load

    return load(None if uri is None else str(uri), device=device, tracking_uri=tracking_uri)


__all__ = ["TinyLLMError", "__version__", "load_model"]
