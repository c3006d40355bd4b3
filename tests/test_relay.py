"""A failed node's cause in one line, from its log as torchrun leaves it; and what of the machines' logs reaches
the flow's log at which level."""

import datetime as dt
import logging
import sys

from tasks.backends.base import Cluster, ClusterSpec, Machine
from tasks.backends.local import LocalBackend
from tasks.relay import MachineLogs, trainer_error

TORCHRUN_REPORT = """E1203 14:09:38.206000 8222 torch/distributed/elastic/multiprocessing/api.py:1002] failed
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: 
============================================================
trainer FAILED
"""


def test_the_trainers_own_error_line_is_the_cause():
    log = "Epoch: [0][2/10]\terror: class folder /data/validation/circle has no images\n" \
          "error: class folder /data/validation/circle has no images\n" + TORCHRUN_REPORT
    assert trainer_error(log) == "error: class folder /data/validation/circle has no images"


def test_else_the_exception_that_ended_the_trainer_not_torchruns_report():
    log = ("[rank0]: Traceback (most recent call last):\n[rank0]:   File \"train.py\", line 3, in run\n"
           "[rank0]: RuntimeError: inner\n\nThe above exception was the direct cause of the following exception:\n\n"
           "[rank0]: Traceback (most recent call last):\n[rank0]:   File \"train.py\", line 9, in main\n"
           "[rank0]: RuntimeError: the run's step failed\n" + TORCHRUN_REPORT)
    assert trainer_error(log) == "RuntimeError: the run's step failed"


def test_no_cause_in_the_log():
    assert trainer_error(TORCHRUN_REPORT) is None
    assert trainer_error("") is None


BARRIER = "E1204 22:37:39.934000 898 torch/distributed/elastic/agent/server/api.py:1008] "
# c10's warning as the store closed, with its C++ stack, just before the record (CI saw it in a completed run)
STORE_CLOSED = "".join(line + "\n" for line in [
    "[W1206 09:05:20.056389252 TCPStore.cpp:138] [c10d] recvValueWithTimeout failed on SocketImpl(fd=3): Failed to "
    "recv, got 0 bytes. Connection was likely closed. Did the remote server shutdown or crash?",
    "Exception raised from recvBytes at /__w/pytorch/pytorch/torch/csrc/distributed/c10d/Utils.hpp:790 (most recent "
    "call first):",
    "frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x9d (0x7f01ae75e60d in libc10.so)",
    "frame #2: c10::DistNetworkError::DistNetworkError(c10::SourceLocation, std::string) + 0x72 (0x7f01 in libc10.so)",
    "<omitting python frames>", "frame #34: _start + 0x21 (0x557ac3325081 in python)", ""])
EXIT_BARRIER_RECORD = STORE_CLOSED + "".join(BARRIER + line + "\n" for line in [
    "Error waiting on exit barrier. Elapsed: 0.0178 seconds",
    "Traceback (most recent call last):",
    '  File "torch/distributed/elastic/agent/server/api.py", line 994, in _exit_barrier',
    "    store_util.barrier(",
    "torch.distributed.DistNetworkError: Failed to recv, got 0 bytes. Connection was likely closed."])


def test_torchruns_exit_barrier_record_is_one_warning_and_a_later_traceback_is_still_an_error(tmp_path, caplog):
    """Node 0's agent may close the store while another agent still leaves the exit barrier (a completed run CI saw
    it in): that record is one warning, not a traceback in the run's log; what follows it is relayed as before."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "train-1.log").write_text(
        "[rank1]: Epoch: [0][18/18]\n" + EXIT_BARRIER_RECORD +
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nRuntimeError: a real one\n")
    spec = ClusterSpec("run", "run", 2, "local", False, dt.datetime.now(dt.timezone.utc))
    machines = tuple(Machine(i, f"m{i}", "127.0.0.1", str(tmp_path)) for i in range(2))
    cluster = Cluster(spec, machines, str(tmp_path), 1, "", str(tmp_path), sys.executable)
    with caplog.at_level(logging.INFO, logger="relay-test"):
        MachineLogs("train", 2).poll(LocalBackend(tmp_path / "home"), cluster, logging.getLogger("relay-test"))
    said = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert [level for level, message in said if "exit barrier" in message] == ["WARNING"]
    assert not any("DistNetworkError" in message or BARRIER in message for _, message in said)
    assert [message for level, message in said if level == "ERROR"] == [
        "machine 1 | Traceback (most recent call last):", 'machine 1 |   File "x.py", line 1, in <module>',
        "machine 1 | RuntimeError: a real one"]
