"""The docs list what the tests check: each bad-input message in docs/bad-input.md is one a test asserts."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_documented_bad_input_is_tested():
    rows = [line.split(" | ") for line in (ROOT / "docs" / "bad-input.md").read_text().splitlines()
            if line.startswith("| ") and "`" in line]
    assert len(rows) >= 15
    for row in rows:
        message, test_file = re.search(r"`(.+)`", row[2])[1], row[3].strip(" |")
        source = (ROOT / test_file).read_text()
        assert message in source or re.search(message, source), f"{message!r} is asserted in {test_file}"
