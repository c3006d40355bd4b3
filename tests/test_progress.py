"""ProgressWatch: which nodes stopped beating, judged only after they beat in the current job."""

from tasks.progress import ProgressWatch


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_node_whose_heartbeat_stops_changing_is_hung_after_the_limit():
    clock = Clock()
    watch = ProgressWatch(60, clock)
    assert watch.hung({0: b"old-0", 1: b"old-1"}) == []  # files an earlier job left
    clock.now = 10
    assert watch.hung({0: b"beat-0a", 1: b"beat-1a"}) == []
    clock.now = 65
    assert watch.hung({0: b"beat-0b", 1: b"beat-1a"}) == []
    clock.now = 71
    assert watch.hung({0: b"beat-0c", 1: b"beat-1a"}) == [1]


def test_the_nodes_a_stuck_node_stalled_are_named_with_it():
    """Node 1 froze and node 0 stalled waiting on it in a collective; the watcher read node 1's last beat a poll
    after node 0's, so node 0 is past the limit first. Both are named."""
    clock = Clock()
    watch = ProgressWatch(60, clock)
    watch.hung({0: b"old-0", 1: b"old-1"})
    clock.now = 10
    watch.hung({0: b"beat-0a", 1: b"beat-1a"})
    clock.now = 12
    watch.hung({0: b"beat-0a", 1: b"beat-1b"})  # the frozen node's last beat, read a poll later
    clock.now = 71
    assert watch.hung({0: b"beat-0a", 1: b"beat-1b"}) == [0, 1]


def test_a_node_that_has_not_beaten_in_this_job_is_not_judged():
    clock = Clock()
    watch = ProgressWatch(60, clock)
    watch.hung({0: b"", 1: b"left by the last job"})
    clock.now = 1000
    assert watch.hung({0: b"", 1: b"left by the last job"}) == [], "still loading, or stuck before its first beat"
