"""The marker → run-state reducer (``run.reduce_marker``): pure, so every rule is one line here.

A run's state follows its ranks while it runs: a crashed rank first, then one waiting for a
debugger, then one attached; a one-process run ends through its target, not its EXIT line.
"""

from __future__ import annotations

from aml_magics.protocol import (
    AttachedMarker,
    BreakpointMarker,
    DetachedMarker,
    EndpointMarker,
    ErrorMarker,
    ExitMarker,
    PostMortemMarker,
)
from aml_magics.run import RunFacts, reduce_marker, summed_state

WAITING, ATTACHED, CRASHED = "waiting_for_debugger", "attached", "crashed_waiting_for_debugger"


def endpoint(rank: int = 0, timeout: float | None = 30.0, deadline: float | None = 100.0) -> EndpointMarker:
    return EndpointMarker(rank=rank, host="127.0.0.1", port=5678, timeout=timeout, deadline=deadline)


def test_an_endpoint_that_waits_makes_the_run_wait_with_its_deadline():
    facts = reduce_marker(RunFacts("running"), endpoint())
    assert (facts.state, facts.rank_states, facts.attach_deadline) == (WAITING, {0: WAITING}, 100.0)


def test_an_endpoint_without_a_wait_leaves_a_running_run_running():
    facts = reduce_marker(RunFacts("running"), endpoint(timeout=0))
    assert facts.state == "running" and facts.rank_states == {0: "running"}


def test_a_bad_endpoint_changes_nothing():
    before = RunFacts("running")
    assert reduce_marker(before, EndpointMarker(host="", port=0)) == before


def test_attach_and_detach_move_the_rank_and_the_run():
    facts = reduce_marker(reduce_marker(RunFacts("running"), endpoint()), AttachedMarker(attached=True))
    assert (facts.state, facts.attached) == (ATTACHED, True)
    facts = reduce_marker(facts, DetachedMarker(reason="client left"))
    assert (facts.state, facts.attached, facts.rank_states[0]) == ("running", False, "running")


def test_a_crash_waits_for_a_debugger_and_says_why():
    crash = PostMortemMarker(type="KeyError", message="'b'", deadline=200.0)
    facts = reduce_marker(RunFacts("running"), crash)
    assert (facts.state, facts.detail, facts.attach_deadline) == (CRASHED, "KeyError: 'b'", 200.0)
    assert facts.rank_details == {0: "KeyError: 'b'"}


def test_a_crashed_rank_outranks_a_waiting_one_and_names_itself():
    facts = RunFacts("running", world_size=2)
    facts = reduce_marker(facts, endpoint(rank=0))
    facts = reduce_marker(facts, PostMortemMarker(rank=1, type="ValueError", message="x"))
    assert facts.state == CRASHED and facts.detail == "rank 1: ValueError: x"
    assert summed_state(facts.rank_states) == CRASHED


def test_a_breakpoint_waits_and_records_where():
    facts = reduce_marker(RunFacts("running"), BreakpointMarker(file="a.py", line=3, deadline=50.0))
    assert (facts.state, facts.rank_details[0], facts.attach_deadline) == (WAITING, "breakpoint() at a.py:3", 50.0)


def test_a_one_process_run_ends_through_its_target_not_its_exit_line():
    facts = reduce_marker(RunFacts("running"), ExitMarker(code=0))
    assert facts.state == "running" and facts.rank_states == {0: "completed"}


def test_a_distributed_rank_that_exits_leaves_the_others_state():
    facts = reduce_marker(reduce_marker(RunFacts("running", world_size=2), endpoint(rank=1)), ExitMarker(code=3))
    assert facts.state == WAITING and facts.rank_states == {0: "failed", 1: WAITING}
    assert facts.rank_details[0] == "exit code 3"
    interrupted = reduce_marker(RunFacts("running", world_size=2), ExitMarker(rank=1, code=130))
    assert interrupted.rank_states[1] == "canceled" and interrupted.rank_details[1] == "interrupted"


def test_a_finished_run_keeps_its_state():
    done = RunFacts("canceled")
    assert reduce_marker(done, endpoint()).state == "canceled"
    assert reduce_marker(done, AttachedMarker(attached=True)).state == "canceled"


def test_an_error_marker_is_the_runs_detail():
    facts = reduce_marker(RunFacts("running"), ErrorMarker(message="debugpy failed to listen"))
    assert facts.detail == facts.error == "debugpy failed to listen" and facts.state == "running"


def test_the_input_is_never_changed():
    before = RunFacts("running", rank_states={0: "running"})
    reduce_marker(before, PostMortemMarker(type="E"))
    assert before.rank_states == {0: "running"} and before.state == "running"


def test_a_client_that_left_is_remembered_until_the_next_attaches():
    from aml_magics.protocol import DetachedMarker as Detached

    facts = reduce_marker(RunFacts("running"), AttachedMarker(attached=True))
    gone = reduce_marker(facts, Detached(reason="debugger gone (connection lost) after 12 s", cause="connection lost"))
    assert (gone.state, gone.debugger_note) == ("running", "debugger gone (connection lost) after 12 s")
    assert gone.rank_details[0] == gone.debugger_note
    assert reduce_marker(gone, Detached()).debugger_note == "debugger detached"
    assert reduce_marker(gone, AttachedMarker(attached=True)).debugger_note == ""
