"""The in-notebook debugger against frames that misbehave (issue 21, items 5 and 11).

Real runs of the local target, real debugpy: a frame of exactly 100 locals (debugpy ignores
``start``/``count``: a page size must never decide when paging ends), a ``__repr__`` that
hangs in the stopped frame (a stop is a stop: the variables have their own deadline), and an
``evaluate`` that never returns (said once, in one line; later requests are not held 30 s
each; it can be cancelled).
"""

from __future__ import annotations

import pytest

import aml_magics
from aml_magics.debugger import core

HUNDRED = "def many():\n" + "".join(f"    v{i:03d} = {i}\n" for i in range(100)) + \
    "    return v000\nmany()\nprint('done', flush=True)\n"
HUNDRED_STOP = 102  # return v000

HANGING = """\
import time
class Slow:
    def __repr__(self):
        time.sleep(3600)
        return "never"
def work():
    slow = Slow()
    answer = 42
    return answer
work()
print("done", flush=True)
"""
HANGING_STOP = 9  # return answer

LOOPING = "value = 7\nprint('value', value, flush=True)\n"


def test_locals_of_exactly_100_variables_returns_them_all(workdir):
    run = aml_magics.submit(code=HUNDRED, name="hundred", port=0, timeout=60)
    dbg = run.attach(breakpoints=[f"hundred.py:{HUNDRED_STOP}"])
    try:
        assert dbg.wait_stopped(30).line == HUNDRED_STOP
        names = dbg.locals()
        assert sorted(names) == [f"v{i:03d}" for i in range(100)]
        assert names["v099"] == "99"
        dbg.continue_()
        assert dbg.wait_stopped(30) is None
    finally:
        dbg.detach()
    assert run.wait(30) == "completed"


def test_a_hanging_repr_does_not_hide_the_stop_nor_refuse_continue(workdir, monkeypatch):
    monkeypatch.setattr(core, "VARIABLES_TIMEOUT", 2.0)
    run = aml_magics.submit(code=HANGING, name="hang", port=0, timeout=60)
    dbg = run.attach(breakpoints=[f"hang.py:{HANGING_STOP}"])
    try:
        stop = dbg.wait_stopped(30)
        assert stop is not None and stop.line == HANGING_STOP and stop.reason == "breakpoint"
        assert dbg.state == "stopped"
        with pytest.raises(aml_magics.DebuggerError, match="variables .* not answered in 2s"):
            dbg.locals()
        dbg.continue_()  # a stop is a stop: resuming is not refused
    finally:
        dbg.detach()
    run.cancel()
    run.wait(30)


def test_an_evaluate_that_never_returns_is_said_once_and_can_be_cancelled(workdir, monkeypatch):
    monkeypatch.setattr(core, "EVALUATE_TIMEOUT", 2.0)
    run = aml_magics.submit(code=LOOPING, name="loop", port=0, timeout=60)
    dbg = run.attach(breakpoints=["loop.py:2"])
    try:
        assert dbg.wait_stopped(30).line == 2
        with pytest.raises(aml_magics.DebuggerError, match=r"still running .*cancel_evaluate\(\)"):
            dbg.evaluate("[0 for _ in iter(int, 1)]")
        assert dbg.busy is not None and "iter(int, 1)" in dbg.busy
        with pytest.raises(aml_magics.DebuggerError, match="still running"):
            dbg.evaluate("value")  # at once, not after another 30 s
        dbg.cancel_evaluate()
        assert dbg.busy is None
        assert dbg.evaluate("value + 1") == "8"
        dbg.continue_()
        assert dbg.wait_stopped(30) is None
    finally:
        dbg.detach()
    assert run.wait(30) == "completed"


def _children(names: range) -> list[dict]:
    return [{"name": f"v{i:03d}", "value": str(i), "variablesReference": 0} for i in names]


def test_a_page_never_ends_by_its_size_whatever_the_adapter_does():
    from aml_magics.dap.service import _page

    everything = _children(range(100))  # debugpy: every child, whatever start/count say
    first = _page(7, 0, 100, everything)
    assert len(first.variables) == 100 and not first.more
    again = _page(7, 100, 100, everything, first="v000")
    assert again.variables == () and not again.more
    honoured = _page(7, 0, 100, _children(range(101)))  # an adapter that sent count + 1
    assert len(honoured.variables) == 100 and honoured.more
    rest = _page(7, 100, 100, _children(range(100, 101)), first="v000")
    assert [v.name for v in rest.variables] == ["v100"] and not rest.more
    sliced = _page(7, 100, 100, _children(range(250)), first="v000")
    assert [v.name for v in sliced.variables][:1] == ["v100"] and sliced.more
