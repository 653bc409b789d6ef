"""The connection core in-process, over a fake transport, job runner and clock: no sockets, milliseconds each.

Each limit and ordering rule both front ends rely on is asserted here once;
tests/integration/ checks the same behaviour over real sockets per mode.
"""

from __future__ import annotations

import pytest

from server.commands import RunCpu, Sleep
from server.config import Config
from server.limits.constants import FAIR_SHARE_BYTES, MAX_PENDING_REPLIES_PER_CLIENT, WRITE_BUFFER_HIGH_WATER
from server.limits.resources import IDLE_TIMEOUT, REQUEST_TIMEOUT, WRITE_TIMEOUT
from server.protocol import encode_command
from tests.unit.fakes import FakeLoop, make_core


def test_pipelined_inline_requests_are_answered_in_one_write() -> None:
    h = make_core()
    h.core.data_received(b"PING\r\nECHO hi\r\n*2\r\n$4\r\nECHO\r\n$2\r\nyo\r\n")
    assert h.transport.writes == [b"+PONG\r\n$2\r\nhi\r\n$2\r\nyo\r\n"]


def test_a_request_split_across_reads_is_answered_when_complete() -> None:
    h = make_core()
    h.core.data_received(b"*2\r\n$4\r\nEC")
    assert h.transport.writes == []
    assert h.core.client.request_started == h.clock.now
    h.core.data_received(b"HO\r\n$1\r\nx\r\n")
    assert h.transport.output == b"$1\r\nx\r\n"
    assert h.core.client.request_started == 0.0


def test_replies_behind_a_cpu_job_wait_for_it_and_leave_in_request_order() -> None:
    h = make_core()
    h.core.data_received(b"PING\r\nPRIMES 10\r\nPING\r\nECHO after\r\n")
    assert h.transport.output == b"+PONG\r\n"  # what came before the job is not held back
    [job] = h.jobs.started
    assert isinstance(job.action, RunCpu) and job.action.args == (10,)
    h.core.job_done(job, b":4\r\n")
    assert h.transport.output == b"+PONG\r\n:4\r\n+PONG\r\n$5\r\nafter\r\n"


def test_jobs_finishing_out_of_order_still_answer_in_request_order() -> None:
    h = make_core()
    h.core.data_received(b"PRIMES 10\r\nSLEEP 5\r\nPRIMES 20\r\n")
    first, sleep, third = h.jobs.started
    assert isinstance(sleep.action, Sleep)
    h.core.job_done(third, b":8\r\n")
    h.core.job_done(sleep, b"+OK\r\n")
    assert h.transport.output == b""
    h.core.job_done(first, b":4\r\n")
    assert h.transport.output == b":4\r\n+OK\r\n:8\r\n"


def test_a_job_answered_at_once_joins_the_chunk_s_single_write() -> None:
    h = make_core()
    h.jobs.immediate = b":4\r\n"
    h.core.data_received(b"PRIMES 10\r\nPING\r\n")
    assert h.transport.writes == [b":4\r\n+PONG\r\n"]


def test_the_reply_queue_bound_pauses_reading_until_replies_go_out() -> None:
    h = make_core()
    h.core.data_received(b"PRIMES 10\r\n" + b"PING\r\n" * MAX_PENDING_REPLIES_PER_CLIENT)
    assert not h.transport.reading
    h.core.job_done(h.jobs.started[0], b":4\r\n")
    assert h.transport.reading
    assert h.transport.output.count(b"+PONG\r\n") == MAX_PENDING_REPLIES_PER_CLIENT


def test_a_full_transport_pauses_reading_and_starts_the_write_deadline() -> None:
    h = make_core()
    h.core.pause_writing()
    assert not h.transport.reading
    assert h.core.client.output_since == h.clock.now
    assert not h.core.waiting_on_peer()
    h.clock.advance(1)
    h.core.resume_writing()
    assert h.transport.reading
    assert h.core.client.output_since == 0.0
    assert h.core.client.last_interaction == h.clock.now


def test_the_query_buffer_cap_closes_without_a_reply() -> None:
    h = make_core(Config(query_buffer_limit=1024, max_bulk_length=512))
    h.core.data_received(b"*5000\r\n" + b"$3\r\nabc\r\n" * 1000)  # a request not yet complete, held
    assert h.transport.closed and not h.transport.aborted
    assert h.transport.writes == []
    assert h.state.stats.client_query_buffer_limit_disconnections == 1


def test_the_output_cap_aborts_a_client_that_does_not_read() -> None:
    h = make_core(Config(output_buffer_limit=4096))
    h.transport.peer_reads = False
    h.transport.buffered = 4000  # the kernel holds what the client has not read
    h.core.pause_writing()
    h.core.data_received(b"ECHO " + b"y" * 200 + b"\r\n")
    assert h.transport.aborted
    assert h.state.stats.client_output_buffer_limit_disconnections == 1


def test_the_output_cap_counts_replies_held_behind_a_job() -> None:
    h = make_core(Config(output_buffer_limit=1000))
    h.core.data_received(b"PRIMES 10\r\n" + b"ECHO " + b"z" * 600 + b"\r\n" + b"ECHO " + b"z" * 600 + b"\r\n")
    assert h.transport.aborted
    assert h.transport.writes == []


@pytest.mark.parametrize(
    ("config", "setup", "reason"),
    [
        (Config(request_timeout=1.0), lambda h: h.core.data_received(b"*2\r\n$4\r\nECHO\r\n"), REQUEST_TIMEOUT),
        (Config(idle_timeout=1.0, request_timeout=0), lambda h: h.core.data_received(b"PING\r\n"), IDLE_TIMEOUT),
        (Config(write_timeout=1.0), lambda h: h.core.pause_writing(), WRITE_TIMEOUT),
    ],
    ids=["request", "idle", "write"],
)
def test_deadlines_close_the_client_once_passed(config, setup, reason) -> None:  # type: ignore[no-untyped-def]
    h = make_core(config)
    setup(h)
    assert h.core.check_deadlines(h.clock.now + 0.5) is None
    assert h.core.check_deadlines(h.clock.now + 1.5) == reason
    assert h.transport.closed
    assert h.transport.aborted == (reason == WRITE_TIMEOUT)  # write-side limits drop what is unsent


def test_idle_and_request_deadlines_do_not_run_while_the_server_is_working() -> None:
    h = make_core(Config(idle_timeout=1.0))
    h.core.data_received(b"SLEEP 10000\r\n")
    assert h.core.check_deadlines(h.clock.now + 60) is None
    assert not h.transport.closed


def test_a_protocol_error_is_answered_then_the_connection_closes() -> None:
    h = make_core()
    h.core.data_received(b"PING\r\n*1\r\n$x\r\nPING\r\n")
    assert h.transport.output == b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
    assert h.transport.closed and not h.transport.aborted


def test_quit_answers_ok_and_ignores_what_follows() -> None:
    h = make_core()
    h.core.data_received(b"QUIT\r\nPING\r\n")
    assert h.transport.output == b"+OK\r\n"
    assert h.transport.closed
    h.core.data_received(b"PING\r\n")
    assert h.transport.output == b"+OK\r\n"


def test_quit_behind_a_job_closes_only_after_the_job_s_reply() -> None:
    h = make_core()
    h.core.data_received(b"PRIMES 10\r\nQUIT\r\n")
    assert not h.transport.closed
    h.core.job_done(h.jobs.started[0], b":4\r\n")
    assert h.transport.output == b":4\r\n+OK\r\n"
    assert h.transport.closed


def test_shutdown_stops_reading_and_answers_what_was_read() -> None:
    h = make_core()
    h.core.data_received(b"PRIMES 10\r\n")
    h.core.stop_reading()
    assert not h.transport.reading and not h.transport.closed
    h.core.data_received(b"PING\r\n")  # arrived after the stop: not served
    h.core.job_done(h.jobs.started[0], b":4\r\n")
    assert h.transport.output == b":4\r\n"
    assert h.transport.closed


def test_eof_closes_once_the_replies_are_out() -> None:
    h = make_core()
    h.core.data_received(b"SLEEP 1\r\n")
    assert h.core.eof_received() is True  # keep the transport open for the reply
    assert not h.transport.closed
    h.core.job_done(h.jobs.started[0], b"+OK\r\n")
    assert h.transport.closed


def test_a_lost_connection_cancels_its_jobs_and_drops_their_replies() -> None:
    h = make_core()
    h.core.data_received(b"PRIMES 10\r\nPRIMES 20\r\n")
    h.core.connection_lost()
    assert h.jobs.cancelled == h.jobs.started
    h.core.job_done(h.jobs.started[0], b":4\r\n")
    assert h.transport.writes == []


def test_a_cpu_reply_is_counted_in_commandstats_when_it_arrives() -> None:
    h = make_core()
    h.core.data_received(b"PRIMES 10\r\n")
    h.core.job_done(h.jobs.started[0], b":4\r\n")
    assert h.state.command_stats.get("primes", "cpu").calls == 1


def test_before_auth_only_auth_is_served() -> None:
    h = make_core(Config(requirepass="s3cret"))
    h.core.data_received(b"PING\r\nAUTH s3cret\r\nPING\r\n")
    assert h.transport.output == b"-NOAUTH Authentication required.\r\n+OK\r\n+PONG\r\n"


def test_connection_open_and_closed_are_logged_at_debug() -> None:
    import structlog

    with structlog.testing.capture_logs() as logs:
        h = make_core()
        h.core.connection_lost()
    events = [entry["event"] for entry in logs]
    assert events == ["connection_open", "connection_closed"]
    assert all(entry["client_id"] == h.core.client.id for entry in logs)


def test_a_big_read_is_served_one_slice_per_loop_pass_with_reading_paused() -> None:
    loop = FakeLoop()
    h = make_core(loop=loop)
    request = b"ECHO abcdefgh\r\n"
    count = 4 * FAIR_SHARE_BYTES // len(request) + 1
    h.core.data_received(request * count)
    served = h.transport.output.count(b"$8\r\nabcdefgh\r\n")
    assert 0 < served <= FAIR_SHARE_BYTES // len(request) + 1
    assert not h.transport.reading
    h.core.data_received(b"PING\r\n")  # arrived meanwhile: kept behind the backlog, in order
    passes = 0
    while loop.run_pass():
        passes += 1
    assert passes >= 4
    assert h.transport.output.count(b"$8\r\nabcdefgh\r\n") == count
    assert h.transport.output.endswith(b"+PONG\r\n")
    assert h.transport.reading


def test_without_a_loop_a_big_read_is_served_whole() -> None:
    h = make_core()
    h.core.data_received(b"PING\r\n" * (FAIR_SHARE_BYTES // 3))
    assert h.transport.output.count(b"+PONG\r\n") == FAIR_SHARE_BYTES // 3
    assert h.transport.reading


def test_quit_inside_a_big_read_drops_the_rest() -> None:
    loop = FakeLoop()
    h = make_core(loop=loop)
    h.core.data_received(b"PING\r\n" * 10 + b"QUIT\r\n" + b"PING\r\n" * FAIR_SHARE_BYTES)
    while loop.run_pass():
        pass
    assert h.transport.output == b"+PONG\r\n" * 10 + b"+OK\r\n"
    assert h.transport.closed


def test_the_server_wide_output_budget_cuts_clients_that_do_not_keep_up() -> None:
    config = Config(output_budget=WRITE_BUFFER_HIGH_WATER * 6)
    first, second = make_core(config), make_core(config)
    second.core.shared = first.core.shared  # two connections of one server
    for h in (first, second):
        h.transport.peer_reads = False
        h.core.pause_writing()
    first.core.data_received(encode_command("ECHO", b"a" * (WRITE_BUFFER_HIGH_WATER * 5)))
    assert not first.transport.closed  # alone under the budget
    second.core.data_received(encode_command("ECHO", b"b" * (WRITE_BUFFER_HIGH_WATER * 5)))
    assert second.transport.aborted  # the two together passed it: the one asking for more is cut
    assert first.state.memory.client_output_bytes < config.output_budget
    first.core.connection_lost()
    assert first.state.memory.client_output_bytes == 0


def test_a_client_that_reads_is_not_counted_against_the_budget() -> None:
    h = make_core(Config(output_budget=1024 * 1024))
    for _ in range(100):
        h.core.data_received(encode_command("ECHO", b"c" * 100_000))
    assert not h.transport.closed
    assert h.state.memory.client_output_bytes == 0
