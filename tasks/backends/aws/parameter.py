"""Print one SSM SecureString parameter (run on a machine: `python -m tasks.backends.aws.parameter NAME`), so
secrets reach the trainer's environment without appearing in any command line SSM records."""

import sys

import boto3

if __name__ == "__main__":
    print(boto3.client("ssm").get_parameter(Name=sys.argv[1], WithDecryption=True)["Parameter"]["Value"])
