"""MLPerf logging through mlperf-logging's `mllog`, from rank 0 only.

Every benchmark logs the keys of `training_4.0.0/common.yaml` and `closed_common.yaml` through
`log_submission()`, its own hyperparameters through `event()`, and the run's intervals through the loop.
The logger is an instance per run (not mllog's global one), so a process that runs twice, as the tests do,
does not write each line twice.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from mlperf_logging.mllog import constants
from mlperf_logging.mllog.mllog import MLLogger as _MLLogger

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MLPerfLogger:
    def __init__(self, path: str | None, enabled: bool, stdout: bool = True):
        self.enabled = enabled
        self.path = path
        self.run_open = False  # between run_start and run_stop: a failure then must still log run_stop
        self._logger = None
        if not enabled:
            return
        # One logging.Logger per log file; handlers are replaced, never stacked across runs.
        logger = logging.getLogger(f"mlperf.{path or 'stdout'}.{id(self)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        if stdout:
            logger.addHandler(logging.StreamHandler(sys.stdout))
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            logger.addHandler(logging.FileHandler(path, mode="a"))
        # stack offset 2: the `file`/`lineno` metadata names the caller of event()/start()/end().
        self._logger = _MLLogger(logger=logger, default_stack_offset=2, root_dir=_REPO_ROOT)

    def event(self, key: str, value=None, metadata: dict | None = None, time_ms: int | None = None) -> None:
        if self.enabled:
            self._logger.event(key=key, value=value, metadata=metadata, time_ms=time_ms)

    def start(self, key: str, value=None, metadata: dict | None = None, time_ms: int | None = None) -> None:
        if self.enabled:
            self._logger.start(key=key, value=value, metadata=metadata, time_ms=time_ms)
            self.run_open = self.run_open or key == constants.RUN_START

    def end(self, key: str, value=None, metadata: dict | None = None, time_ms: int | None = None) -> None:
        if self.enabled:
            self._logger.end(key=key, value=value, metadata=metadata, time_ms=time_ms)
            self.run_open = self.run_open and key != constants.RUN_STOP

    def close(self) -> None:
        if self._logger is not None:
            for handler in list(self._logger.logger.handlers):
                handler.flush()
                handler.close()
                self._logger.logger.removeHandler(handler)
            self._logger = None
            self.enabled = False
            self.run_open = False

    def log_submission(self, benchmark: str, *, org: str, platform: str, division: str, status: str) -> None:
        self.event(constants.SUBMISSION_BENCHMARK, benchmark)
        self.event(constants.SUBMISSION_ORG, org)
        self.event(constants.SUBMISSION_DIVISION, division)
        self.event(constants.SUBMISSION_STATUS, status)
        self.event(constants.SUBMISSION_PLATFORM, platform)


def now_ms() -> int:
    return int(time.time() * 1000)
