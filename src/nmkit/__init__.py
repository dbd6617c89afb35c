"""nmkit: AI for nuclear medicine and medical imaging research and clinical routine."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("nmkit")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
