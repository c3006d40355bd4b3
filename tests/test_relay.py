"""A failed node's cause in one line, from its log as torchrun leaves it."""

from tasks.relay import trainer_error

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
