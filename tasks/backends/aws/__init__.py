"""The AWS backend (boto3): see backend.py."""

from tasks.backends.aws.backend import AwsBackend
from tasks.backends.aws.options import AwsOptions

__all__ = ["AwsBackend", "AwsOptions"]
