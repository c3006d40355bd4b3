"""What only reports (TensorBoard events, metrics records) keeps what a full disk refused, tries again after a
pause, and writes it all once there is space: on a real, small tmpfs, with the pauses' clock in the test's hands."""

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.disks import fill, small_disk
from trainer.recorder import JsonLines, TensorBoardEvents
from trainer.side_path import LONGEST_PAUSE


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_tensorboard_values_added_while_the_disk_is_full_are_written_once_it_is_freed(tmp_path):
    clock = Clock()
    with small_disk(tmp_path / "disk", 1) as disk:
        events = TensorBoardEvents(disk / "run", clock)
        events.add({"loss": 0.0}, 0)
        ballast = fill(disk)
        for step in range(1, 300):  # more than the events file's last page holds
            events.add({"loss": float(step)}, step)
            clock.now += 0.5  # several tries fail
        assert events.side_path.failures > 1
        ballast.unlink()
        clock.now += LONGEST_PAUSE
        events.add({"loss": 300.0}, 300)
        assert not events.side_path.failing
        events.close()
        written = EventAccumulator(str(disk / "run"))
        written.Reload()
        assert sorted({event.step for event in written.Scalars("loss")}) == list(range(301))


def test_records_appended_while_the_disk_is_full_follow_once_it_is_freed_and_no_line_is_torn(tmp_path):
    clock = Clock()
    with small_disk(tmp_path / "disk", 1) as disk:
        records = JsonLines(disk / "metrics.jsonl", clock)
        records.append({"n": 0})
        ballast = fill(disk)
        for n in range(1, 100):  # more than the file's last page holds: one append is cut short by the full disk
            records.append({"n": n, "padding": "x" * 100})
            clock.now += 0.5
        assert records.side_path.failures > 1
        ballast.unlink()
        clock.now += LONGEST_PAUSE
        records.append({"n": 100})
        records.close()
        lines = (disk / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["n"] for line in lines] == list(range(101))
