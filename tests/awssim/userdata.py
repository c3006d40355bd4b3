"""Instance user-data: not run (it mounts disks and installs the project on a real machine), only checked with
`-n` by the shell its #! line names, and searched for a shutdown timer, which the player honours."""

import base64
import gzip
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

SYSTEMD_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


@dataclass
class UserData:
    check: str  # "ok", "none", "skipped: <why>", or bash -n's complaint
    shutdown_after_s: float | None  # seconds after launch; None when no timer was found


def decode(encoded: str) -> str:
    raw = base64.b64decode(encoded)
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", "replace")


def inspect(encoded: str | None, save_as: Path) -> UserData:
    """Save the decoded script, check its syntax and find its shutdown timer."""
    if not encoded:
        return UserData("none", None)
    text = decode(encoded)
    save_as.parent.mkdir(parents=True, exist_ok=True)
    save_as.write_text(text)
    shell = re.match(r"#![^\n]*\b((?:ba)?sh)\b", text)  # cloud-init runs the file: its #! line picks the shell
    if not shell:
        return UserData("skipped: not a shell script", None)
    result = subprocess.run([shell[1], "-n", str(save_as)], capture_output=True, text=True)
    return UserData("ok" if result.returncode == 0 else result.stderr.strip(), shutdown_timer_s(text))


def shutdown_timer_s(script: str) -> float | None:
    """Seconds until `shutdown -h +MINUTES` or `systemd-run --on-active=SPAN` fires; the earliest if several."""
    delays = [60.0 * int(m) for m in re.findall(r"\bshutdown\s+(?:-[a-zA-Z]+\s+)*\+(\d+)", script)]
    for span in re.findall(r"\bsystemd-run\b[^\n]*?--on-active[= ]['\"]?([0-9a-z]+)", script):
        parts = re.findall(r"(\d+)\s*([a-z]*)", span)
        if parts and all(unit in SYSTEMD_UNITS for _, unit in parts):
            delays.append(float(sum(int(n) * SYSTEMD_UNITS[unit] for n, unit in parts)))
    return min(delays, default=None)
