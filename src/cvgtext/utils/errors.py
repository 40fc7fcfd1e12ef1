"""Errors a user can cause; the entry points print them as one message, without a traceback."""


class CVGTextError(Exception):
    """Base class of errors caused by bad input: data, configuration, checkpoints."""


class DataError(CVGTextError):
    """An annotation or image file of a dataset is missing or malformed."""


class ConfigError(CVGTextError):
    """A configuration value is inconsistent or names something that does not exist."""


class CheckpointError(CVGTextError):
    """A checkpoint is missing, unreadable or belongs to another model."""


class OutputError(CVGTextError):
    """An output file (checkpoint, report, log) cannot be written: no space, no permission."""


class TrainingError(CVGTextError):
    """Training ended without training anything: nothing it would report can be trusted."""
