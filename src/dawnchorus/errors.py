"""Every error dawnchorus raises, on one base.

The command line catches :class:`DawnchorusError` once: it prints the message (which names the file,
field or option and the problem) and exits with the error's ``exit_code``: 2 for bad input or usage,
1 for a run that failed. Classes keep ``ValueError`` / ``RuntimeError`` as a second base where callers
catch those.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class DawnchorusError(Exception):
    """Base of every error the package raises on purpose; the message is meant for a person."""

    exit_code = 1


class InputError(DawnchorusError, ValueError):
    """Bad input or usage: a file, table, option or setting that cannot be used as given."""

    exit_code = 2


class RunError(DawnchorusError, RuntimeError):
    """A run that could not start or finish with valid inputs."""

    exit_code = 1


# --- configuration and files -------------------------------------------------------------------


class ConfigError(InputError):
    """A configuration that cannot be used; the message names each bad field."""


class AudioError(InputError):
    """A recording that cannot be used. The message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class AudioFileNotFoundError(AudioError):
    """The path does not exist or is not a file."""


class AudioDecodeError(AudioError):
    """The file is not audio libsndfile can decode (corrupt, wrong format, unreadable)."""


class AudioEmptyError(AudioError):
    """The file is 0 bytes, or decodes to zero samples."""


class AudioTruncatedError(AudioError):
    """The file ends before the length its header declares."""


class AudioNonFiniteError(AudioError):
    """The decoded samples contain NaN or infinity."""


class OutputError(InputError):
    """A table or file that cannot be written or read; the message names it and the problem."""


class DatasetError(InputError):
    """A training set that cannot be used as it is; ``.problems`` lists every problem found."""

    def __init__(self, problems: Sequence[object], source: str | Path = "training set") -> None:
        self.problems = list(problems)
        lines = [f"{len(self.problems)} problem(s) in {source}:"]
        lines += [f"  - {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


class SynthError(InputError):
    """A request the synthetic data generator cannot fulfil; the message names the parameter."""


# --- models ----------------------------------------------------------------------------------------


class ModelError(InputError):
    """A model that cannot be built: unknown backbone, unusable weights, weights unavailable."""


class ModelFileError(InputError):
    """A file that is not a readable dawnchorus model file; the message names it and says why."""


# --- runs ------------------------------------------------------------------------------------------


class TrainingError(RunError):
    """A training run that cannot start or finish; the message says why."""


class PredictionError(InputError):
    """Unusable prediction inputs or options; the message says which."""


class ClusterError(PredictionError):
    """A cluster that cannot be started or reached, or unusable cluster settings."""


class ExportError(RunError):
    """An ONNX export or ONNX engine that cannot be used; the message says why and what to do."""


class EvaluationError(InputError):
    """Inputs that cannot be scored; the message names the table or file and the problem."""


class ReportError(InputError):
    """A folder the report cannot be built from; the message names the file and the problem."""


class DemoError(InputError):
    """A demo that cannot run as asked; the message names the option or folder and the problem."""


__all__ = [
    "AudioDecodeError",
    "AudioEmptyError",
    "AudioError",
    "AudioFileNotFoundError",
    "AudioNonFiniteError",
    "AudioTruncatedError",
    "ClusterError",
    "ConfigError",
    "DatasetError",
    "DawnchorusError",
    "DemoError",
    "EvaluationError",
    "ExportError",
    "InputError",
    "ModelError",
    "ModelFileError",
    "OutputError",
    "PredictionError",
    "ReportError",
    "RunError",
    "SynthError",
    "TrainingError",
]
