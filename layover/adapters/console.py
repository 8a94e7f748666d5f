"""A flow run that outlives the process reading its output.

A Prefect process worker reads each flow run's stdout and stderr through a pipe. If the worker
dies (kill -9, OOM, a restart that spares its children) the run goes on, and its next console log
line hits a broken pipe. Prefect's console handler prints with rich, whose answer to a broken
pipe is `SystemExit(1)`: the release would crash there, at any stage, over a log line. Measured
with tests/integration/test_faults_processes.py: the orphaned run crashed in archive sync.

Here a broken pipe silences the console instead; the logs still reach the Prefect API.
"""

from __future__ import annotations

import logging


def survive_a_closed_console() -> int:
    """Make every rich console behind a logging handler go quiet on a broken pipe instead of
    exiting. Returns how many consoles were changed (the handlers are Prefect's, found by shape:
    this layer does not import Prefect)."""
    changed = 0
    # Prefect puts its console handler on the root logger (and on a few of its own)
    loggers: list[logging.Logger] = [logging.root]
    loggers += [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            console = getattr(handler, "console", None)
            if console is None or not hasattr(console, "on_broken_pipe"):
                continue

            def go_quiet(console=console) -> None:
                console.quiet = True  # rich drops every later write

            console.on_broken_pipe = go_quiet
            changed += 1
    return changed
