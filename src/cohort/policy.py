"""Task-management policies: what happens when a task runs long, fails or loses its engine.

    policy = cohort.Policy(timeout=300, retries=2, on_failure="cancel_rest",
                           min_engines=2, engine_wait=30)
    with lv.temp_flags(policy=policy):
        results = lv.map(run_case, cases)

A policy can be given per call (``lv.apply(f, x, timeout=60)``), per view
(``lv.set_flags(retries=2)``, ``lv.temp_flags(...)``) or as a `Policy`
object; a setting given closer to the call wins. The controller enforces it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

ON_FAILURE = ("continue", "cancel_rest")


@dataclass(frozen=True)
class Policy:
    """How the controller manages a load-balanced task.

    timeout      seconds a task may run; then it is interrupted (its engine is
                 restarted if it does not stop) and fails with `TaskTimeout`.
                 None: no limit.
    retries      how many times a failed task (exception, timeout, engine
                 death) is resubmitted, to an engine it has not failed on when
                 one is available.
    on_failure   "continue" (default), or "cancel_rest": the first task of a
                 call (a `map`, say) that fails for good cancels the rest,
                 whose results raise `TaskCancelled`.
    min_engines  do not start before this many engines are connected.
    engine_wait  seconds to wait for `min_engines`; then the task fails with
                 `NoEnginesError`. None: wait as long as it takes.
    """

    timeout: float | None = None
    retries: int = 0
    on_failure: str = "continue"
    min_engines: int = 0
    engine_wait: float | None = None

    def __post_init__(self):
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, "
                             f"not {self.timeout!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {self.retries!r}")
        if self.on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure must be one of {ON_FAILURE}, not {self.on_failure!r}")
        if not isinstance(self.min_engines, int) or self.min_engines < 0:
            raise ValueError(f"min_engines must be an int >= 0, not {self.min_engines!r}")
        if self.engine_wait is not None and self.engine_wait < 0:
            raise ValueError(f"engine_wait must be >= 0 seconds or None, not {self.engine_wait!r}")

    def merged(self, **settings) -> "Policy":
        """A copy with these settings changed (None values are ignored)."""
        changes = {k: v for k, v in settings.items() if v is not None}
        unknown = set(changes) - POLICY_KEYS
        if unknown:
            raise TypeError(f"unknown policy setting(s) {sorted(unknown)}; "
                            f"known: {sorted(POLICY_KEYS)}")
        return replace(self, **changes) if changes else self

    def wire(self) -> dict:
        """The settings that differ from the defaults, as the controller reads them
        (made once per policy: do not change the dict)."""
        w = self.__dict__.get("_wire")
        if w is None:
            w = {f.name: getattr(self, f.name) for f in fields(self)
                 if getattr(self, f.name) != f.default}
            self.__dict__["_wire"] = w  # frozen: every call would give the same
        return w


POLICY_KEYS = frozenset(f.name for f in fields(Policy))
