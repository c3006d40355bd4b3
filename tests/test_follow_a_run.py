"""A run can be followed by a process that did not make it: each backend rebuilds the run's cluster from what its
tags and records say (`cluster(run_id)`), and a job launched through the rebuilt cluster is followed through
another one, as a second orchestrator, or a person's shell, would."""

import dataclasses
import datetime as dt
import sys
import time

import pytest

from tasks.backends.aws import AwsBackend
from tasks.backends.base import BackendError, Cluster, ClusterSpec
from tasks.backends.local import LocalBackend
from tests.aws_runs import DATASET, cluster_spec, finished, options
from tests.leftovers import aws_leftovers

PRINTS = [sys.executable, "-c", "print('followed')"]


def _same(rebuilt: Cluster, made: Cluster) -> None:
    """Equal but for the expiry's sub-second part, which AWS's tags do not keep."""
    assert abs(rebuilt.spec.expires_at - made.spec.expires_at) < dt.timedelta(seconds=1)
    assert dataclasses.replace(rebuilt, spec=dataclasses.replace(rebuilt.spec, expires_at=made.spec.expires_at)) \
        == made


def test_a_local_run_is_followed_from_its_records(tmp_path, tiny_data):
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    spec = ClusterSpec("4f0c9e2a-follow", "follow-me", 2, "local", False, expires)
    maker = LocalBackend(tmp_path)
    made = maker.provision(spec, maker.replicate(spec, str(tiny_data), 2))
    try:
        rebuilt = LocalBackend(tmp_path).cluster(spec.run_id)
        _same(rebuilt, made)
        LocalBackend(tmp_path).launch(rebuilt, {0: PRINTS, 1: PRINTS}, "job")
        follower = LocalBackend(tmp_path)
        deadline = time.monotonic() + 60
        while not (status := follower.status(follower.cluster(spec.run_id), "job")).done:
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert (status.succeeded, status.failed) == (2, {})
        assert follower.read_storage(rebuilt, "logs/job-1.log") == b"followed\n"
    finally:
        maker.teardown(spec.run_id)
    with pytest.raises(BackendError, match="has no machines here"):
        LocalBackend(tmp_path).cluster(spec.run_id)


@pytest.mark.slow
def test_an_aws_run_is_followed_from_its_machines_tags(aws, snapshot, tmp_path):
    spec = cluster_spec("run-follow", 2, "g5.xlarge", spot=True)
    maker = AwsBackend(options(ssh_cidr="203.0.113.0/24"), home=tmp_path)
    made = maker.provision(spec, maker.replicate(spec, DATASET, 2))
    try:
        rebuilt = AwsBackend(options(ssh_cidr="203.0.113.0/24"), home=tmp_path).cluster(spec.run_id)
        _same(rebuilt, made)
        AwsBackend(options(), home=tmp_path).launch(rebuilt, {0: [rebuilt.python, *PRINTS[1:]],
                                                              1: [rebuilt.python, *PRINTS[1:]]}, "job")
        follower = AwsBackend(options(), home=tmp_path)
        status = finished(follower, follower.cluster(spec.run_id), "job")
        assert (status.succeeded, status.failed) == (2, {})
        assert follower.read_storage(rebuilt, "logs/job-1.log") == b"followed\n"
    finally:
        maker.teardown(spec.run_id)
    assert aws_leftovers(aws, spec.run_id) == {}
    with pytest.raises(BackendError, match="has no machine running"):
        AwsBackend(options(), home=tmp_path).cluster(spec.run_id)
