"""Errors a user can cause. Each message says what was expected, what was found, and what to do; the stage
command line prints it without a traceback."""


class PipelineError(Exception):
    """Base of every error the user can fix (bad params, broken archive, missing credentials, ...)."""


class ConfigError(PipelineError, ValueError):
    """params.yaml has problems; the message lists every one of them."""


class ArchiveError(PipelineError, ValueError):
    """The archive is unsafe, broken or not in the competition's layout."""


class ImageError(PipelineError, ValueError):
    """An image in the archive cannot be decoded."""


class ModelError(PipelineError, ValueError):
    """A backbone that cannot be built as configured."""


class SubmissionError(PipelineError, ValueError):
    """A submission that Kaggle would reject or score wrongly."""


class KaggleError(PipelineError, RuntimeError):
    """Kaggle could not do what was asked."""


class OutputError(PipelineError, ValueError):
    """An earlier stage's output is missing, damaged or out of step with another; re-running the stages fixes it."""


class DeviceError(PipelineError, RuntimeError):
    """The device asked for in params.yaml is not there."""
