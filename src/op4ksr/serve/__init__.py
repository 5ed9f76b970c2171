"""A local web page for upscaling: ``op4ksr serve`` (see docs/SERVE.md).

Standard library only (``http.server``); jobs run one at a time per model in a worker thread.
"""

from op4ksr.serve.jobs import DONE, FAILED, QUEUED, RUNNING, Job, QueueFull
from op4ksr.serve.server import OP4KSRServer, ServeApp, ServeConfig, make_server

__all__ = [
    "DONE",
    "FAILED",
    "QUEUED",
    "RUNNING",
    "Job",
    "OP4KSRServer",
    "QueueFull",
    "ServeApp",
    "ServeConfig",
    "make_server",
]
