"""The %px magics through a real Jupyter kernel (jupyter_client + ipykernel), against the
shared two-engine cluster: what a notebook receives on the iopub channel."""

from __future__ import annotations

import importlib.util
import os
import re

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
if importlib.util.find_spec("ipykernel") is None:  # not imported here: it changes progress-bar defaults
    pytest.skip("ipykernel is not installed: pip install ipykernel", allow_module_level=True)


@pytest.fixture
def kernel(rc, tmp_path, monkeypatch):
    """A python3 kernel whose `cohort.Client()` is the shared cluster's; shut down afterwards.
    Its connection file and IPython profile live in `tmp_path`, not the home folder."""
    from jupyter_client.manager import start_new_kernel
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    env = dict(os.environ, COHORT_CONNECTION_FILE=str(rc.connection_file),
               IPYTHONDIR=str(tmp_path / "ipython"))
    km, kc = start_new_kernel(startup_timeout=60, kernel_name="python3", env=env)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def execute(kc, code: str, timeout: float = 60, on_message=None):
    """Run `code`; return (execute_reply content, iopub messages of this request)."""
    msg_id = kc.execute(code)
    msgs = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        msgs.append(msg)
        if on_message is not None:
            on_message(msgs)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"], msgs


def streams(msgs) -> str:
    return "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream")


def displays(msgs) -> list:
    return [m["content"]["data"] for m in msgs if m["msg_type"] in ("display_data", "execute_result")]


def test_px_in_a_jupyter_kernel(kernel):
    km, kc = kernel
    reply, _ = execute(kc, "%load_ext cohort")
    assert reply["status"] == "ok", reply
    reply, msgs = execute(kc, "%px print('hi from', 'the kernel')")
    assert reply["status"] == "ok", reply
    out = streams(msgs)
    assert "[stdout:0] hi from the kernel" in out and "[stdout:1] hi from the kernel" in out
    reply, msgs = execute(kc, "%px 6 * 7")
    texts = [d.get("text/plain", "") for d in displays(msgs)]
    assert any(re.fullmatch(r"Out\[0:\d+\]: 42", t) for t in texts), texts
    assert any(re.fullmatch(r"Out\[1:\d+\]: 42", t) for t in texts), texts
    reply, msgs = execute(kc, "%%px --targets 0\nfrom IPython.display import HTML\n"
                              "display(HTML('<b>from engine 0</b>'))")
    assert reply["status"] == "ok", reply
    assert [d["text/html"] for d in displays(msgs) if "text/html" in d] == ["<b>from engine 0</b>"]
    assert "[output:0]" in streams(msgs)
    # --noblock: the AsyncResult is the cell's value, with its HTML repr
    reply, msgs = execute(kc, "%px --noblock nb = 1")
    results = [m["content"]["data"] for m in msgs if m["msg_type"] == "execute_result"]
    assert results and "AsyncResult" in results[0]["text/plain"] and "text/html" in results[0]
    reply, msgs = execute(kc, "%pxresult")
    assert reply["status"] == "ok"
    # an error: one block per engine with its remote traceback
    reply, msgs = execute(kc, "%px 1 / 0")
    assert reply["status"] == "error"
    (err,) = [m["content"] for m in msgs if m["msg_type"] == "error"]
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(err["traceback"]))
    assert "[engine 0] ZeroDivisionError" in text and "[engine 1] ZeroDivisionError" in text


def test_interrupting_the_kernel_interrupts_the_engines(kernel):
    km, kc = kernel
    execute(kc, "%load_ext cohort")

    def interrupt_once_busy(msgs, done=[]):
        text = streams(msgs)
        if not done and "[stdout:0] busy" in text and "[stdout:1] busy" in text:
            done.append(True)
            km.interrupt_kernel()   # what the notebook's stop button does

    reply, msgs = execute(kc, "%%px\nprint('busy', flush=True)\nwhile True:\n    pass",
                          on_message=interrupt_once_busy)
    assert reply["status"] == "error"
    (err,) = [m["content"] for m in msgs if m["msg_type"] == "error"]
    assert "KeyboardInterrupt" in "\n".join(err["traceback"])
    reply, msgs = execute(kc, "%px 'still alive'")
    assert reply["status"] == "ok"
    assert sum("'still alive'" in d.get("text/plain", "") for d in displays(msgs)) == 2
