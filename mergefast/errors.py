"""Error types that mergefast raises for users.

Every error a user can cause (a bad config, a missing model, an unreadable file) is a
`MergefastError`: the CLI prints its message on one line and exits with its `exit_code`,
without a traceback unless `-v` is given.
"""


class MergefastError(Exception):
    """Base class of every error mergefast reports to a user."""

    exit_code = 1


class ConfigError(MergefastError):
    """The YAML or the options are wrong: fix the config (exit code 2)."""

    exit_code = 2


class ModelError(MergefastError):
    """A model folder, repo id or checkpoint file cannot be used (exit code 1)."""


class MergeError(MergefastError):
    """The arithmetic cannot produce a sensible result for a tensor (exit code 1)."""


class PipelineStopped(BaseException):
    """Not a user's error: raised in a pipeline stage (io/pipeline.py) by its next torch call,
    or by a wait for a download, once the run has stopped. A BaseException, like
    KeyboardInterrupt: `except Exception` fallbacks (kernels/dispatch.py turns a failed C++
    kernel into the torch reference for the rest of the run) must not catch it. Here because
    the downloads (io/hub_arrivals.py) start before torch is imported (mergefast/dtypes.py)."""
