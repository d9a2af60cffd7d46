"""A live web dashboard of a running cluster: engines, task stream, queue, failures, jobs.

It runs as its own process, a client of the controller (the controller's loop is not
touched); `cohort dashboard` runs it in the foreground, `cohort start --dashboard` in
the background. See docs/dashboard.md.
"""

from .run import add_dashboard_parser, read_record, start_background, stop_background
from .server import Dashboard, dashboard_token

__all__ = ["Dashboard", "add_dashboard_parser", "dashboard_token", "read_record",
           "start_background", "stop_background"]
