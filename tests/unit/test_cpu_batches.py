"""How ready cpu jobs are cut into submissions (server.cpu.jobs._cut): in order, every worker busy, bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st


def test_a_lone_job_goes_alone() -> None:
    from server.cpu.jobs import _cut

    assert _cut([7], [1.0], room=4, workers=2) == [[7]]


@given(
    weights=st.lists(st.sampled_from([1.0, 0.5, 1 / 64, 1 / 3]), min_size=1, max_size=300),
    room=st.integers(1, 8),
    workers=st.integers(1, 8),
)
def test_cuts_keep_order_and_stay_within_a_submission(weights: list[float], room: int, workers: int) -> None:
    from server.cpu.jobs import _cut

    jobs = list(range(len(weights)))
    groups = _cut(jobs, weights, room, workers)
    assert [job for group in groups for job in group] == jobs
    assert all(group for group in groups)
    for group in groups:
        assert len(group) == 1 or sum(weights[job] for job in group) <= 1.0 + 1e-9
    assert len(groups) >= min(room, workers, len(jobs))
