"""The installed tinyllm's version: recorded in every model package and shown by --version."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tinyllm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"
