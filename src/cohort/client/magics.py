"""IPython magics: ``%px``, ``%%px``, ``%pxresult``, ``%autopx``, ``%pxconfig``.

``%load_ext cohort`` registers them against ``cohort.Client()`` (the default
profile, or ``$COHORT_CONNECTION_FILE``; created at the first use), or
against the view of the last ``rc.activate()``; ``rc.activate(targets,
suffix)`` registers them bound to a view, with names ending in `suffix`
(``%px_a``...) so several clusters or views can be driven side by side.

Options (``%px``, ``%%px``; ``%pxconfig`` sets the defaults):

* ``--targets SPEC`` — ``all``, ``0``, ``0:2``, ``::2``, ``1,3``;
* ``--block`` / ``--noblock`` — wait and show (default), or return the
  AsyncResult at once (show it later with ``%pxresult``);
* ``--local`` — also run the code in the local namespace (``%px`` only).

See docs/interactive.md.
"""

from __future__ import annotations

import logging

try:
    from IPython.core.error import UsageError
    from IPython.core.magic import Magics, magics_class
except ImportError as e:  # pragma: no cover - IPython is optional for cohort
    raise ImportError("the %px magics need IPython: pip install ipython") from e

from .pxdisplay import wait_and_show

log = logging.getLogger(__name__)

_magics: dict = {}   # suffix -> the ParallelMagics registered under it (the last one)
_last_view = None    # the view of the last activate()


def parse_targets(spec: str):
    """A ``--targets`` value: ``"all"``, an engine id, a slice or a list of ids."""
    spec = spec.strip().strip("[]")
    if spec in ("all", "*", ""):
        return "all"
    try:
        if ":" in spec:
            parts = [int(p) if p.strip() else None for p in spec.split(":")]
            if len(parts) > 3:
                raise ValueError(spec)
            return slice(*parts)
        if "," in spec:
            return [int(p) for p in spec.split(",") if p.strip()]
        return [int(spec)]
    except ValueError:
        raise UsageError(f"--targets takes all, an engine id, a slice (0:2, ::2) or ids "
                         f"(1,3), not {spec!r}") from None


def split_options(line: str, allowed: tuple) -> tuple[dict, str]:
    """({option: value}, code) from a magic line: options come first, code after."""
    opts: dict = {}
    rest = line.lstrip()
    while rest.startswith("--"):
        word, _, after = rest.partition(" ")
        word = word.strip()
        name, eq, value = word[2:].partition("=")
        if name not in allowed:
            raise UsageError(f"unknown option --{name}; known: "
                             + " ".join("--" + a for a in allowed))
        if name == "targets" and not eq:
            try:
                value, after = after.lstrip().split(None, 1) if after.strip() else ("", "")
            except ValueError:
                value, after = after.strip(), ""
            if not value:
                raise UsageError("--targets needs a value: --targets 0:2")
        opts[name] = value if name == "targets" else True
        rest = after.lstrip()
    return opts, rest


@magics_class
class ParallelMagics(Magics):
    """The magics, bound to one view (``view=None``: ``cohort.Client()``'s, made at first use)."""

    def __init__(self, shell, view=None, suffix: str = ""):
        super().__init__(shell)
        self._view = view
        self.suffix = suffix
        self.block = True
        self.targets = None        # None: the view's own; else from --targets
        self.last_result = None    # the last %px's AsyncResult
        self.autopx = False
        self._transformer = None
        self.magics = {"line": {"px" + suffix: self.px_line,
                                "pxresult" + suffix: self.pxresult,
                                "autopx" + suffix: self.autopx_toggle,
                                "pxconfig" + suffix: self.pxconfig},
                       "cell": {"px" + suffix: self.px_cell}}

    # --- the view -----------------------------------------------------------
    @property
    def view(self):
        """The view the magics run on (``cohort.Client()`` made now if none was given)."""
        if self._view is None:
            from ..errors import CohortError
            from .client import Client
            try:
                client = Client()
            except CohortError as e:  # no cluster: say so in one line, not a traceback
                raise UsageError(f"{e}; or bind the magics to a client: rc.activate()") from None
            self._view = client.direct_view("all")
            log.info("%%px magics use %r", self._view.client)
        return self._view

    def _view_for(self, targets):
        view = self.view
        if targets is None:
            return view
        client = view.client
        if targets == "all":
            return client.direct_view("all")
        if isinstance(targets, slice):
            return client.direct_view(client.ids[targets])
        return client.direct_view(list(targets))

    # --- running code ---------------------------------------------------------
    def _run(self, line: str, cell: str | None):
        opts, code = split_options(line, ("targets", "block", "noblock", "local"))
        if cell is not None:
            if code.strip():
                raise UsageError(f"%%px{self.suffix} takes options on its line, code below; "
                                 f"got {code!r}")
            code = cell
        if not code.strip():
            raise UsageError(f"%px{self.suffix} needs code to run: %px{self.suffix} import numpy")
        targets = parse_targets(opts["targets"]) if "targets" in opts else self.targets
        block = False if opts.get("noblock") else True if opts.get("block") else self.block
        view = self._view_for(targets)
        ar = self._submit(view, code)
        self.last_result = ar
        if opts.get("local"):
            self.shell.ex(code)
        if not block:
            return ar
        wait_and_show(ar)
        return None

    @staticmethod
    def _submit(view, code: str):
        """Execute `code` on the view; its output is shown by us, not the client's I/O thread."""
        quiet = view.client._quiet
        quiet.on = True
        try:
            return view.execute(code, block=False)
        finally:
            quiet.on = False

    def px_line(self, line: str):
        """%px [--targets T] [--block|--noblock] [--local] CODE — run CODE on the engines."""
        return self._run(line, None)

    def px_cell(self, line: str, cell: str):
        """%%px [--targets T] [--block|--noblock] [--local] — run the cell on the engines."""
        return self._run(line, cell)

    def pxresult(self, line: str = "") -> None:
        """%pxresult — wait for the last %px result and show its output and values."""
        if self.last_result is None:
            raise UsageError(f"no %px{self.suffix} result yet: run %px{self.suffix} --noblock CODE first")
        wait_and_show(self.last_result)

    def pxconfig(self, line: str) -> None:
        """%pxconfig [--targets T] [--block|--noblock] — set the defaults of %px."""
        opts, rest = split_options(line, ("targets", "block", "noblock"))
        if rest.strip():
            raise UsageError(f"%pxconfig takes only options, not {rest!r}")
        if "targets" in opts:
            self.targets = parse_targets(opts["targets"])
        if opts.get("noblock"):
            self.block = False
        elif opts.get("block"):
            self.block = True
        if not opts:
            print(f"%px{self.suffix}: targets={self.targets or self.view.targets!r} block={self.block}")

    # --- %autopx --------------------------------------------------------------
    def autopx_toggle(self, line: str = "") -> None:
        """%autopx — from now on every cell runs on the engines (as %%px), until %autopx again."""
        transforms = self.shell.input_transformers_cleanup
        if self.autopx:
            if self._transformer in transforms:
                transforms.remove(self._transformer)
            self.autopx = False
            print(f"%autopx{self.suffix} disabled")
        else:
            self._transformer = self._autopx_transform
            transforms.append(self._transformer)
            self.autopx = True
            print(f"%autopx{self.suffix} enabled: cells run on the engines "
                  f"(lines starting with % run here); %autopx{self.suffix} to stop")

    def _autopx_transform(self, lines: list) -> list:
        """Input transformer: a cell becomes a %%px call, except local magics."""
        cell = "".join(lines)
        stripped = cell.lstrip()
        if not stripped or stripped.startswith("%") or stripped.startswith("!"):
            return lines
        return [f"get_ipython().run_cell_magic({'px' + self.suffix!r}, '', {cell!r})\n"]


def activate(view, suffix: str = "") -> object:
    """Register the magics in the running IPython bound to `view`; return the view."""
    from IPython import get_ipython
    shell = get_ipython()
    if shell is None:
        raise RuntimeError("activate() registers IPython magics: run it inside IPython or Jupyter")
    _register(shell, view, suffix)
    global _last_view
    _last_view = view
    return view


def _register(shell, view, suffix: str) -> "ParallelMagics":
    old = _magics.get(suffix)
    if old is not None and old.autopx:  # its transformer must not linger
        old.autopx_toggle()
    magics = ParallelMagics(shell, view, suffix)
    shell.register_magics(magics)
    _magics[suffix] = magics
    return magics


def load_ipython_extension(shell) -> None:
    """``%load_ext cohort``: the magics on the last activated view, else ``cohort.Client()``."""
    current = _magics.get("")
    if current is not None and current.shell is shell:
        return
    _register(shell, _last_view, "")


def unload_ipython_extension(shell) -> None:
    """``%unload_ext cohort``: turn %autopx off."""
    for magics in _magics.values():
        if magics.autopx and magics.shell is shell:
            magics.autopx_toggle()


__all__ = ["ParallelMagics", "activate", "load_ipython_extension", "parse_targets",
           "split_options", "unload_ipython_extension"]
