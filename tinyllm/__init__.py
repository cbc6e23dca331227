"""tinyllm: a character-level GPT trained, tracked and served through DVC and MLflow."""

from importlib.metadata import PackageNotFoundError, version

from tinyllm.errors import TinyLLMError

try:
    __version__ = version("tinyllm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"


def load_model(path, device: str = "cpu"):
    """Load a model package directory; returns a `tinyllm.package.LoadedModel` (generate/stream)."""
    from tinyllm.package import load_package

    return load_package(path, device=device)


__all__ = ["TinyLLMError", "__version__", "load_model"]
