"""The %px magics inside a real IPython shell, against the shared two-engine cluster.

IPython's own `InteractiveShell` runs the cells (`run_cell`); what the cells
show is captured with IPython's `capture_output` (stdout, stderr and rich
display data alike).
"""

from __future__ import annotations

import base64
import os
import re
import signal
import threading

import pytest

pytest.importorskip("IPython")

from IPython.core.completer import provisionalcompleter  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from IPython.utils.capture import capture_output  # noqa: E402

import cohort  # noqa: E402
from cohort import _traceback  # noqa: E402
from cohort.client import magics as px_magics  # noqa: E402
from conftest import wait_until  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """One IPython shell for this module (the process-wide instance; its profile in a
    temporary folder, history in memory); cleared afterwards, so later tests run
    without IPython."""
    from traitlets.config import Config
    saved = os.environ.get("IPYTHONDIR")
    os.environ["IPYTHONDIR"] = str(tmp_path_factory.mktemp("ipython"))
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    sh = InteractiveShell.instance(config=config)
    yield sh
    for m in list(px_magics._magics.values()):
        if m.autopx:
            m.autopx_toggle()
    px_magics._magics.clear()
    px_magics._last_view = None
    InteractiveShell.clear_instance()
    if saved is None:
        os.environ.pop("IPYTHONDIR", None)
    else:
        os.environ["IPYTHONDIR"] = saved


@pytest.fixture
def ip(shell, rc):
    """The shell with the magics bound to all engines of the shared cluster."""
    rc.activate()
    m = px_magics._magics[""]
    yield shell
    if m.autopx:
        m.autopx_toggle()


def run(ip, cell: str):
    """Run a cell; return (ExecutionResult, captured output)."""
    with capture_output() as cap:
        result = ip.run_cell(cell)
    return result, cap


def plain(text: str) -> str:
    return ANSI.sub("", text)


def out_texts(cap) -> list:
    """text/plain of every display published during the cell."""
    return [o.data.get("text/plain", "") for o in cap.outputs]


# --- %px, %%px, results ----------------------------------------------------------------------------
def test_px_line_streams_labelled_output_and_results(ip):
    r, cap = run(ip, "%px import os; print('hello from', 'engine')")
    assert r.success, r.error_in_exec
    assert "[stdout:0] hello from engine" in cap.stdout
    assert "[stdout:1] hello from engine" in cap.stdout
    r, cap = run(ip, "%px 6 * 7")
    assert r.success
    outs = out_texts(cap)
    assert any(re.fullmatch(r"Out\[0:\d+\]: 42", o) for o in outs), outs
    assert any(re.fullmatch(r"Out\[1:\d+\]: 42", o) for o in outs), outs


def test_px_stderr_and_partial_lines(ip):
    r, cap = run(ip, "%%px\nimport sys\nsys.stderr.write('careful\\n')\nprint('a', end='')\nprint('b')\n"
                     "print('tail', end='')")
    assert r.success
    assert "[stderr:0] careful" in cap.stderr and "[stderr:1] careful" in cap.stderr
    assert "[stdout:0] ab\n" in cap.stdout and "[stdout:1] tail\n" in cap.stdout


def test_px_output_is_streamed_while_the_cell_runs(ip, tmp_path):
    """The cell waits on the engine until the client has shown its first line."""
    flag = tmp_path / "seen"
    stop = threading.Event()

    def watch():
        import sys
        while not stop.is_set():
            if "[stdout:0] first" in sys.stdout.getvalue():  # capture_output's StringIO
                flag.touch()
                return
            stop.wait(0.02)

    cell = (f"%%px --targets 0\nimport os, time\nprint('first', flush=True)\n"
            f"for _ in range(3000):\n    if os.path.exists({str(flag)!r}): break\n"
            f"    time.sleep(0.01)\nelse:\n    print('never seen')\nprint('second')")
    with capture_output() as cap:
        t = threading.Thread(target=watch, daemon=True)
        t.start()
        r = ip.run_cell(cell)
        stop.set()
        t.join(5)
    assert r.success
    assert "[stdout:0] first" in cap.stdout and "[stdout:0] second" in cap.stdout
    assert "never seen" not in cap.stdout


def test_px_cell_targets_noblock_then_pxresult(ip):
    r, cap = run(ip, "%%px --targets 0:1 --noblock\nnb_x = [1, 2, 3]; print('nb'); sum(nb_x)")
    assert r.success
    ar = r.result
    assert isinstance(ar, cohort.AsyncResult) and ar.targets == [0]
    r, cap = run(ip, "%pxresult")
    assert r.success
    assert "[stdout:0] nb" in cap.stdout and "[stdout:1]" not in cap.stdout
    assert any(re.fullmatch(r"Out\[0:\d+\]: 6", o) for o in out_texts(cap))


def test_px_targets_forms_and_local(ip, rc):
    r, cap = run(ip, "%px --targets 1 print('one')")
    assert "[stdout:1] one" in cap.stdout and "[stdout:0]" not in cap.stdout
    r, cap = run(ip, "%px --targets=::2 print('even')")
    assert "[stdout:0] even" in cap.stdout and "[stdout:1]" not in cap.stdout
    r, cap = run(ip, "%px --targets 0,1 --local px_local = 17")
    assert r.success and ip.user_ns["px_local"] == 17
    assert rc[:].pull("px_local", block=True) == [17, 17]
    r, _ = run(ip, "%px --targets bogus 1")
    assert not r.success and "--targets" in str(r.error_in_exec)
    r, _ = run(ip, "%px")
    assert not r.success


def test_pxconfig_sets_defaults(ip):
    run(ip, "%pxconfig --targets 1 --noblock")
    try:
        r, _ = run(ip, "%px pc = 1")
        assert isinstance(r.result, cohort.AsyncResult) and r.result.targets == [1]
        r.result.get(10)
    finally:
        run(ip, "%pxconfig --targets all --block")
    r, cap = run(ip, "%px print('back')")
    assert r.result is None and "[stdout:0] back" in cap.stdout and "[stdout:1] back" in cap.stdout


def test_activate_with_suffix_and_targets(ip, rc):
    view = rc.activate(targets=[1], suffix="_one")
    assert view.targets == [1]
    r, cap = run(ip, "%px_one print('suffixed')")
    assert r.success and "[stdout:1] suffixed" in cap.stdout and "[stdout:0]" not in cap.stdout


# --- errors and interrupts ------------------------------------------------------------------------
def test_px_error_shows_each_engines_remote_traceback(ip):
    r, cap = run(ip, "%%px\ndef inner():\n    return 1 / 0\ninner()")
    err = r.error_in_exec
    assert isinstance(err, cohort.CompositeError) and len(err.errors) == 2
    text = plain(cap.stdout)
    assert "[engine 0] ZeroDivisionError: division by zero" in text
    assert "[engine 1] ZeroDivisionError: division by zero" in text
    assert text.count("in inner") == 2 and "return 1 / 0" in text
    assert "run_cell_magic" not in text  # the remote traceback, not the client's frames
    one = run(ip, "%px --targets 0 import nosuchmodule_xyz")[1]
    assert "[engine 0] ModuleNotFoundError" in plain(one.stdout)


def test_remote_traceback_is_highlighted_when_the_shell_has_colors(rc):
    with pytest.raises(cohort.RemoteError) as ei:
        rc[0].execute("1 / 0", block=True)
    colored = "\n".join(_traceback.render_remote(ei.value, color=True))
    assert "\x1b[" in colored and "ZeroDivisionError" in plain(colored)
    bare = "\n".join(_traceback.render_remote(ei.value, color=False))
    assert "\x1b[" not in bare and bare.startswith("[engine 0] ZeroDivisionError")


@pytest.fixture
def waiting(monkeypatch):
    """An Event set once a %px cell is waiting for its result (showing output as it comes)."""
    from cohort.client import pxdisplay
    event = threading.Event()
    drain = pxdisplay.Renderer.drain

    def spy(self):
        event.set()
        return drain(self)

    monkeypatch.setattr(pxdisplay.Renderer, "drain", spy)
    return event


def test_ctrl_c_interrupts_the_engines_and_returns_control(ip, waiting):
    main = threading.get_ident()
    magics = px_magics._magics[""]

    def kick():
        def started():  # both engines printed 'busy': they are in the loop
            ar = magics.last_result
            return waiting.is_set() and ar is not None and {
                i for i, k, t in list(ar._events) if k == "stdout" and "busy" in t} == {0, 1}
        wait_until(started, 30, msg="both engines to start the loop")
        signal.pthread_kill(main, signal.SIGINT)

    magics.last_result = None
    t = threading.Thread(target=kick, daemon=True)
    t.start()
    try:
        r, cap = run(ip, "%%px\nprint('busy', flush=True)\nwhile True:\n    pass")
    except KeyboardInterrupt:  # never expected: the magic handles it
        pytest.fail("the KeyboardInterrupt escaped the cell")
    t.join(5)
    err = r.error_in_exec
    assert isinstance(err, cohort.RemoteError)
    assert {e.ename for e in getattr(err, "errors", [err])} == {"KeyboardInterrupt"}
    assert "[stdout:0] busy" in cap.stdout
    assert "while True" in plain(cap.stdout) and "_on_sigint" not in plain(cap.stdout)
    r, cap = run(ip, "%px 'alive'")
    assert r.success and sum("'alive'" in o for o in out_texts(cap)) == 2


def test_ctrl_c_leaves_other_code_on_the_engine_running(ip, rc, tmp_path, waiting):
    """Ctrl-C in a cell queued behind another task: the cell's task is dropped, the other goes on."""
    flag = tmp_path / "go"
    other = rc[0].execute(f"import os, time\nprint('OTHER', flush=True)\n"
                          f"while not os.path.exists({str(flag)!r}): time.sleep(0.01)\n'finished'")
    wait_until(lambda: "OTHER" in other.stdout, 30, msg="the other task to start")
    main = threading.get_ident()
    magics = px_magics._magics[""]
    magics.last_result = None

    def kick():
        wait_until(lambda: waiting.is_set() and magics.last_result is not None, 30,
                   msg="the cell to wait for its result")
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=kick, daemon=True)
    t.start()
    r, cap = run(ip, "%px --targets 0 print('queued cell ran')")
    t.join(5)
    assert isinstance(r.error_in_exec, cohort.TaskAborted), r.error_in_exec
    shown = plain(cap.stdout)
    assert "[engine 0] TaskAborted" in shown and "most recent call last" not in shown
    assert not other.done()
    flag.touch()
    other.get(30)
    assert "queued cell ran" not in other.stdout


def test_an_engine_dying_in_a_cell_is_one_line_per_engine(shell, make_cluster):
    cl = make_cluster(n=1)
    cl.client.wait_for_engines(1, timeout=30)
    cl.client.activate(suffix="_dies")
    r, cap = run(shell, "%px_dies import os; os._exit(3)")
    assert isinstance(r.error_in_exec, cohort.EngineError)
    shown = plain(cap.stdout)
    assert "[engine 0] EngineError" in shown and "most recent call last" not in shown


# --- %autopx ---------------------------------------------------------------------------------------
def test_autopx_on_and_off(ip, rc):
    ip.user_ns.pop("auto_z", None)
    r, cap = run(ip, "%autopx")
    assert "enabled" in cap.stdout
    try:
        r, cap = run(ip, "auto_z = 11\nprint('on engines', auto_z)")
        assert r.success
        assert "[stdout:0] on engines 11" in cap.stdout and "[stdout:1] on engines 11" in cap.stdout
        assert "auto_z" not in ip.user_ns
        assert rc[:].pull("auto_z", block=True) == [11, 11]
        r, cap = run(ip, "%pxconfig")  # a magic still runs here
        assert r.success and "block=True" in cap.stdout
    finally:
        r, cap = run(ip, "%autopx")
    assert "disabled" in cap.stdout
    r, cap = run(ip, "auto_local = 3")
    assert ip.user_ns["auto_local"] == 3


# --- rich display --------------------------------------------------------------------------------
def test_display_html_from_engine_code(ip, rc):
    r, cap = run(ip, "%%px\nfrom IPython.display import HTML\ndisplay(HTML('<b>bold</b>'))\n"
                     "print('after')")
    assert r.success, r.error_in_exec
    html = [o.data for o in cap.outputs if "text/html" in o.data]
    assert len(html) == 2 and all(d["text/html"] == "<b>bold</b>" for d in html)
    assert "[output:0]" in cap.stdout and "[output:1]" in cap.stdout
    assert cap.stdout.index("[output:0]") < cap.stdout.index("[stdout:0] after")
    ar = rc[0].execute("display(HTML('<i>kept</i>'), metadata={'k': 1})")
    ar.get(10)
    (out,) = ar.outputs
    assert out["data"]["text/html"] == "<i>kept</i>" and "text/plain" in out["data"]
    assert out["metadata"] == {"k": 1}


def test_rich_last_value_is_shown_as_out(ip):
    r, cap = run(ip, "%px --targets 0 HTML('<i>last</i>')")
    assert r.success
    assert re.search(r"Out\[0:\d+\]:", cap.stdout)
    assert [o.data["text/html"] for o in cap.outputs if "text/html" in o.data] == ["<i>last</i>"]


def test_matplotlib_figure_arrives_as_png(ip, rc):
    pytest.importorskip("matplotlib")
    r, cap = run(ip, "%%px\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    assert r.success, r.error_in_exec
    pngs = [o.data["image/png"] for o in cap.outputs if "image/png" in o.data]
    assert len(pngs) == 2
    assert all(base64.b64decode(p).startswith(b"\x89PNG") for p in pngs)
    # a figure left open when the cell ends is sent too (as Jupyter's inline backend does)
    ar = rc[0].execute("fig = plt.figure(); fig.gca().bar([1, 2], [3, 4])")
    ar.get(10)
    assert [list(o["data"]) for o in ar.outputs] == [["image/png", "text/plain"]]
    # display(fig) sends it once (it is closed, so the end of the cell does not send it again)
    ar = rc[0].execute("fig2 = plt.figure(); fig2.gca().plot([0, 1]); display(fig2)")
    ar.get(10)
    assert [list(o["data"]) for o in ar.outputs] == [["image/png", "text/plain"]]
    rc[0].execute("open_figs = len(plt.get_fignums())", block=True)
    assert rc[0].pull("open_figs", block=True) == 0  # sent figures are closed


def test_display_outputs_inside_ipython(ip, rc):
    ar = rc[:].execute("print('x'); display(HTML('<u>u</u>')); 5")
    ar.get(10)
    with capture_output() as cap:
        ar.display_outputs()
    assert "[stdout:0] x" in cap.stdout and "[output:1]" in cap.stdout
    assert sum("text/html" in o.data for o in cap.outputs) == 2
    assert any(re.fullmatch(r"Out\[1:\d+\]: 5", o) for o in out_texts(cap))


# --- reprs and completion --------------------------------------------------------------------------
def test_html_and_text_reprs(rc):
    html = rc._repr_html_()
    assert "<table" in html and "cohort.Client" in html and "idle" in html
    assert "[0, 1]" in repr(rc)
    dv = rc[:]
    assert "<table" in dv._repr_html_() and "DirectView" in dv._repr_html_()
    lv = rc.load_balanced_view()
    assert "LoadBalancedView" in lv._repr_html_()
    ar = dv.execute("1")
    ar.get(10)
    h = ar._repr_html_()
    assert "<progress" in h and "done" in h and "execute" in h
    assert ar.wait_interactive() is True
    bad = dv.execute("1/0")
    bad.wait(10)
    assert "failed" in bad._repr_html_() and "ZeroDivisionError" in bad._repr_html_()
    mr = lv.map(abs, range(10), progress=False)
    mr.get(10)
    assert "<progress" in mr._repr_html_() and "MapResult" in mr._repr_html_()


def test_tab_completion_of_remote_names(ip, rc):
    dv = rc[:]
    dv.push({"complete_me_1": 1, "complete_me_2": 2}, block=True)
    names = dv._ipython_key_completions_()
    assert {"complete_me_1", "complete_me_2"} <= set(names)
    assert not any(n.startswith("_") for n in names)
    ip.user_ns["cdv"] = dv
    line = 'cdv["complete_me'
    with provisionalcompleter():
        matches = [c.text for c in ip.Completer.completions(line, len(line))]
    assert {"complete_me_1", "complete_me_2"} <= set(matches), matches


def test_load_ext_uses_the_connection_file(shell, rc, monkeypatch):
    """`%load_ext cohort` with nothing activated: cohort.Client() from $COHORT_CONNECTION_FILE."""
    monkeypatch.setenv("COHORT_CONNECTION_FILE", str(rc.connection_file))
    monkeypatch.setattr(px_magics, "_last_view", None)
    monkeypatch.setattr(px_magics, "_magics", {})
    cohort.load_ipython_extension(shell)
    m = px_magics._magics[""]
    try:
        with capture_output() as cap:
            r = shell.run_cell("%px print('lazy')")
        assert r.success and "[stdout:0] lazy" in cap.stdout
        assert m.view.client is not rc and m.view.client.connection_file == rc.connection_file
    finally:
        if m._view is not None:
            m._view.client.close()


# --- pieces without a cluster ------------------------------------------------------------------------
def test_parse_targets_and_options():
    assert px_magics.parse_targets("all") == "all"
    assert px_magics.parse_targets("0:2") == slice(0, 2)
    assert px_magics.parse_targets("::2") == slice(None, None, 2)
    assert px_magics.parse_targets("1,3") == [1, 3]
    assert px_magics.parse_targets("[2]") == [2]
    opts, code = px_magics.split_options("--targets 0:2 --noblock x = '--block'",
                                         ("targets", "block", "noblock"))
    assert opts == {"targets": "0:2", "noblock": True} and code == "x = '--block'"
    opts, code = px_magics.split_options("--targets=1 print(1)", ("targets",))
    assert opts == {"targets": "1"} and code == "print(1)"
    from IPython.core.error import UsageError
    with pytest.raises(UsageError):
        px_magics.split_options("--nope 1", ("targets",))
    with pytest.raises(UsageError):
        px_magics.parse_targets("a:b")


def test_engine_mime_bundles():
    from cohort.engine import display as d

    class Rich:
        def _repr_html_(self):
            return "<p>r</p>"

        def _repr_png_(self):
            return b"\x89PNG..."

        def _repr_markdown_(self):
            return None

    data, md = d.format_bundle(Rich())
    assert data["text/html"] == "<p>r</p>" and base64.b64decode(data["image/png"]) == b"\x89PNG..."
    assert "text/markdown" not in data and data["text/plain"].startswith("<")

    class Bundle:
        def _repr_mimebundle_(self, include=None, exclude=None):
            return {"application/json": {"a": 1}}, {"application/json": {"expanded": True}}

    data, md = d.format_bundle(Bundle())
    assert data["application/json"] == {"a": 1} and md == {"application/json": {"expanded": True}}
    assert d.format_bundle(Rich)[0] == {"text/plain": repr(Rich)}  # a class, not an instance
    assert not d.has_rich_repr(3) and d.has_rich_repr(Rich())
