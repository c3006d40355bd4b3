"""Instance user-data: not run (it mounts disks and installs the project on a real machine), only checked with
`-n` by the shell its #! line names, read line by line against its image's facts for what would stop its boot on
a real machine (a package apt cannot find, a tool whose package is missing, an interpreter outside the project's
Requires-Python), and searched for a shutdown timer, which the player honours."""

import base64
import gzip
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .images import ImageFacts

SYSTEMD_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


@dataclass
class UserData:
    check: str  # "ok", "none", "skipped: <why>", bash -n's complaint, or "boot failed: <what a machine says>"
    shutdown_after_s: float | None  # seconds after launch; None when no timer was found

    @property
    def boot_failed(self) -> bool:
        return self.check.startswith("boot failed: ")


def decode(encoded: str) -> str:
    raw = base64.b64decode(encoded)
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", "replace")


def inspect(encoded: str | None, save_as: Path, image: ImageFacts | None, requires_python: str) -> UserData:
    """Save the decoded script, check its syntax and, on an image with known facts, its boot; find its shutdown
    timer."""
    if not encoded:
        return UserData("none", None)
    text = decode(encoded)
    save_as.parent.mkdir(parents=True, exist_ok=True)
    save_as.write_text(text)
    shell = re.match(r"#![^\n]*\b((?:ba)?sh)\b", text)  # cloud-init runs the file: its #! line picks the shell
    if not shell:
        return UserData("skipped: not a shell script", None)
    result = subprocess.run([shell[1], "-n", str(save_as)], capture_output=True, text=True)
    failure = boot_failure(text, image, requires_python) if image else None
    check = result.stderr.strip() if result.returncode else f"boot failed: {failure}" if failure else "ok"
    return UserData(check, shutdown_timer_s(text))


APT_INSTALL = re.compile(r"\bapt(?:-get)?\b[^\n;&|]*?\binstall\b([^\n;&|]*)")
VENV = re.compile(r"(?<![\w/.-])(?:/usr/bin/)?(python3(?:\.\d+)?)\s+-m\s+venv\b")
NFS_MOUNT = re.compile(r"\bmount\b[^\n]*\s-t\s+nfs4?\b|\bmount\.nfs4?\b")


def boot_failure(script: str, image: ImageFacts, requires_python: str) -> str | None:
    """What stops the script first on a machine of `image` (each step needs what the steps before it installed),
    in the words the machine's log would have; None when nothing does."""
    packages = set(image.installed)
    for line in script.splitlines():
        line = line.split("#", 1)[0] if not line.startswith("#!") else ""
        for install in APT_INSTALL.finditer(line):
            for package in (word for word in install[1].split() if not word.startswith("-")):
                if package not in image.archive and package not in packages:
                    return f"E: Unable to locate package {package}"
                packages.add(package)
        if NFS_MOUNT.search(line) and "nfs-common" not in packages:
            return ("mount: bad option; for several filesystems (e.g. nfs, cifs) you might need a /sbin/mount.nfs4 "
                    "helper program (nfs-common is not installed)")
        for python in VENV.findall(line):
            failure = _venv_failure(python, image, packages, requires_python)
            if failure:
                return failure
    return None


def _venv_failure(python: str, image: ImageFacts, packages: set[str], requires_python: str) -> str | None:
    minor = ".".join(image.python3.split(".")[:2]) if python == "python3" else python.removeprefix("python")
    if python != "python3" and python not in packages:
        return f"{python}: command not found"
    venv_packages = {f"python{minor}-venv"} | ({"python3-venv"} if python == "python3" else set())
    if not venv_packages & packages:
        return ("The virtual environment was not created successfully because ensurepip is not available. On "
                f"Debian/Ubuntu systems, you need to install the python{minor}-venv package")
    version = image.python3 if image.python3.startswith(f"{minor}.") else image.archive[python]
    # pip compares Requires-Python with the interpreter's major.minor.micro alone (3.11.0rc1 counts as 3.11.0).
    release = ".".join(map(str, Version(version).release[:3]))
    if release not in SpecifierSet(requires_python):
        return f"ERROR: Package 'imagenet18' requires a different Python: {release} not in '{requires_python}'"
    return None


def shutdown_timer_s(script: str) -> float | None:
    """Seconds until `shutdown -h +MINUTES` or `systemd-run --on-active=SPAN` fires; the earliest if several."""
    delays = [60.0 * int(m) for m in re.findall(r"\bshutdown\s+(?:-[a-zA-Z]+\s+)*\+(\d+)", script)]
    for span in re.findall(r"\bsystemd-run\b[^\n]*?--on-active[= ]['\"]?([0-9a-z]+)", script):
        parts = re.findall(r"(\d+)\s*([a-z]*)", span)
        if parts and all(unit in SYSTEMD_UNITS for _, unit in parts):
            delays.append(float(sum(int(n) * SYSTEMD_UNITS[unit] for n, unit in parts)))
    return min(delays, default=None)
