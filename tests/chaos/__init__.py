"""Faults at random: runs of the imagenet18 flow, local and on the AWS simulator, several at once, each with a
fault drawn from a seed (scenarios.py), struck and judged by what the world shows (runner.py, census.py), and
reported with the command that draws the same runs again (report.py). tests/test_chaos.py runs a few;
bench/chaos_soak.py many."""
