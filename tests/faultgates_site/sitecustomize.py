"""On PYTHONPATH of a served test runner: the flow-run processes it starts (`python -m prefect.engine`) install
the fault gate the test chose; the runner itself, which runs the cancellation hooks, and the trainer processes
a flow starts do not."""

import os
import sys

if os.environ.get("IMAGENET18_TEST_GATE") and sys.orig_argv[1:3] == ["-m", "prefect.engine"]:
    from tests.faultgates import install_from_environment

    install_from_environment()
