"""The exit step: how the run ended, into the model store's run log and to an optional webhook."""

from components.notify.component import report_run_end

__all__ = ["report_run_end"]
