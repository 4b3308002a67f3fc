"""The one exception family a researcher sees as a one-line message instead of a traceback."""


class SarnetError(Exception):
    """An error caused by input or configuration, reported as one line by the CLI and stages."""


class DataError(SarnetError):
    """A dataset file is missing, truncated, corrupt or does not match its known checksum."""


class ConfigError(SarnetError):
    """A parameter value is out of range or inconsistent with another one."""


class TrainingDiverged(SarnetError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunInProgress(SarnetError):
    """Another live process is training into the same checkpoint."""
