"""ProgressWatch: which nodes stopped beating, judged only after they beat in the current job; and what beats."""

import json

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tasks.progress import ProgressWatch
from trainer.distributed import World
from trainer.engine import Context, evaluate
from trainer.loaders import PhaseLoaders
from trainer.recorder import NodeHeartbeat


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


def test_a_node_beats_while_it_validates(tmp_path):
    """Its training steps and each epoch's end beat; its validation did not, so one longer than --hang-minutes (a
    big validation set on CPUs) was judged a hang: the node was restarted, validated again, and the run failed."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    heartbeat = NodeHeartbeat(tmp_path, node_rank=0, enabled=True, seconds=0.0)
    world = World(rank=0, size=1, local_rank=0, local_size=1, node_rank=0, device=torch.device("cpu"))
    ctx = Context(model, model, torch.optim.SGD(model.parameters(), lr=0.1), schedule=None, world=world,
                  recorder=None, node_heartbeat=heartbeat, bf16=False, channels_last=False, print_freq=10)
    images, labels = torch.randint(0, 256, (12, 3, 4, 4), dtype=torch.uint8), torch.randint(0, 2, (12,))
    beats, seen = tmp_path / "heartbeats" / "node-0.json", []

    def watched(loader):  # the batch of the last beat, as an orchestrator reads it when each batch is asked for
        for batch in loader:
            seen.append(json.loads(beats.read_text())["batch"] if beats.exists() else None)
            yield batch

    val = watched(DataLoader(TensorDataset(images, labels), batch_size=4))
    evaluate(ctx, PhaseLoaders(phase=None, train=None, val=val, val_steps=3, train_dir=None, val_dir=None), epoch=5)
    assert seen == [None, 1, 2], "each batch validated beats before the next is read"
    beat = json.loads(beats.read_text())
    assert (beat["epoch"], beat["phase"], beat["batch"], beat["batches"]) == (5, "validation", 3, 3)
