"""The demo's side-by-side steps: output forwarded and tagged, progress in a log per step,
cores shared, a failure stops the demo with the end of the failed step's log."""
from __future__ import annotations

import os
import sys
import time

import click
import pytest

from pipeline import demo

PYTHON = [sys.executable, "-c"]


def step(tag: str, code: str) -> demo.Step:
    return demo.Step(tag, f"step {tag}", [code], command=list(PYTHON))


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    monkeypatch.setattr(demo, "STATUS_EVERY", 0.2)
    return tmp_path


def test_steps_run_together_with_a_share_of_the_cores(root, capsys):
    code = ("import os, sys, time; sys.stderr.write('loading 50%\\rloading 100%'); "
            "sys.stderr.flush(); time.sleep(0.6); print('threads', os.environ['OMP_NUM_THREADS']);"
            " print('result {tag}')")
    last = demo.run_steps([step("a", code.replace("{tag}", "a")),
                           step("b", code.replace("{tag}", "b"))])
    assert last == {"a": "result a", "b": "result b"}
    out = capsys.readouterr().out
    share = max(1, (os.cpu_count() or 1) // 2)
    assert f"[a] threads {share}" in out and f"[b] threads {share}" in out
    assert "[a] done (" in out and "[b] done (" in out
    assert "] loading 100%" in out          # a progress line from the log, newest bar state
    assert (root / demo.LOG_DIR / "a.log").read_bytes() == b"loading 50%\rloading 100%"


def test_a_failed_step_stops_the_others_and_shows_its_log(root):
    pid_file = root / "slow.pid"
    slow = step("slow", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid()));"
                        " time.sleep(30)")
    bad = step("bad", "import sys, time; time.sleep(1); "
                      "sys.stderr.write('step one\\nValueError: broken input\\n'); sys.exit(3)")
    with pytest.raises(click.ClickException, match=r"(?s)step failed: bad \(exit code 3\).*"
                                                   r"ValueError: broken input"):
        demo.run_steps([slow, bad])
    pid = int(pid_file.read_text())
    for _ in range(50):                  # the slow step was stopped, not left running
        try:
            os.waitpid(pid, os.WNOHANG)
            os.kill(pid, 0)
        except (ChildProcessError, ProcessLookupError):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the slow step is still running")


def test_last_progress_reads_the_newest_bar_state(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("epoch 1/5: 10%\repoch 1/5: 20%\n\n")
    assert demo.last_progress(log) == "epoch 1/5: 20%"
    assert demo.last_progress(tmp_path / "missing.log") == ""
