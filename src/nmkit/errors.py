"""Errors that name the file and the problem, so a user can act on them."""

from __future__ import annotations

from pathlib import Path


class NmkitError(Exception):
    """Base class for every error nmkit raises on purpose."""


class InputError(NmkitError):
    """Bad input: a file that cannot be read, or lacks what the operation needs."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}")

    def __reduce__(self):  # picklable across process pools (the default would call __init__ with one argument)
        return (_rebuild_input_error, (type(self), self.path, self.problem, dict(self.__dict__)))


class DicomReadError(InputError):
    """A DICOM file or series that cannot be turned into an image or ROI."""


class MissingTagError(DicomReadError):
    """A DICOM attribute needed for a computation (e.g. SUV) is missing."""

    def __init__(self, path: str | Path | None, tags: list[str] | str, purpose: str):
        tags = [tags] if isinstance(tags, str) else list(tags)
        self.tags = tags
        super().__init__(path, f"missing DICOM attribute(s) {', '.join(tags)} needed for {purpose}")


def _rebuild_input_error(cls: type, path: str | None, problem: str, state: dict) -> InputError:
    error = InputError.__new__(cls)
    InputError.__init__(error, path, problem)
    error.__dict__.update(state)
    return error


class GeometryError(NmkitError):
    """Images or masks whose grids do not match where they must."""
