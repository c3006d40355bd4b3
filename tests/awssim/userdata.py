"""Instance user-data: not run (it mounts disks and installs the project on a real machine), only checked with `-n` by
the shell its #! line names, read line by line against its image's facts for what would stop its boot on a real
machine (a mount of a mount point /etc/fstab lacks, a package apt cannot find, in the image's archive or a PPA the
script adds, a download from a host the machine cannot reach, a PPA it cannot reach where apt-get update is told to
fail on it, a venv's Python that its check finds to be a pre-release, a tool whose package is missing, an interpreter
outside the project's Requires-Python, a hashed lock that lacks a dependency the machine's Python needs, an `apt-get
update` not asked again on the words it fails with while the image's own first-boot apt-daily holds the package
lists' lock, a hashed install not asked again on a download the network cuts short, an unset variable under
`set -u`), and searched for a shutdown timer, which the player honours, and for the services it restarts (SSM's agent,
the player's concern)."""

import base64
import gzip
import re
import subprocess
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from .images import ImageFacts

SYSTEMD_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


@dataclass
class UserData:
    check: str  # "ok", "none", "skipped: <why>", bash -n's complaint, or "boot failed: <what a machine says>"
    shutdown_after_s: float | None  # seconds after launch; None when no timer was found
    # Whether the venv's Python has its C headers (python3.X-dev), which Triton's build of its GPU launchers
    # needs, and its version; None where no venv of a known image was made.
    python_headers: bool | None = None
    python_version: str | None = None
    restarted_units: frozenset[str] = frozenset()  # systemd units it restarts (a snap's service as its unit)
    remounted: frozenset[str] = frozenset()  # mount points it puts in /etc/fstab, which every boot mounts
    rearms_shutdown: bool = False  # it leaves cloud-init a per-boot script that arms a shutdown again

    @property
    def boot_failed(self) -> bool:
        return self.check.startswith("boot failed: ")


def decode(encoded: str) -> str:
    raw = base64.b64decode(encoded)
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", "replace")


def inspect(encoded: str | None, save_as: Path, image: ImageFacts | None, project: Path,
            unreachable: frozenset[str] = frozenset()) -> UserData:
    """Save the decoded script, check its syntax and, on an image with known facts, its boot (`unreachable`: hosts
    the machine cannot reach); find its shutdown timer."""
    if not encoded:
        return UserData("none", None)
    text = decode(encoded)
    save_as.parent.mkdir(parents=True, exist_ok=True)
    save_as.write_text(text)
    shell = re.match(r"#![^\n]*\b((?:ba)?sh)\b", text)  # cloud-init runs the file: its #! line picks the shell
    if not shell:
        return UserData("skipped: not a shell script", None)
    result = subprocess.run([shell[1], "-n", str(save_as)], capture_output=True, text=True)
    failure, headers, version = boot(text, image, project, unreachable) if image else (None, None, None)
    check = result.stderr.strip() if result.returncode else f"boot failed: {failure}" if failure else "ok"
    return UserData(check, shutdown_timer_s(text), headers, version, restarted_units(text),
                    frozenset(fstab_entries(text)), rearms_shutdown(text))


APT_INSTALL = re.compile(r"\bapt(?:-get)?\b[^\n;&|]*?\binstall\b([^\n;&|]*)")
# A package-list update that is its line's own command (or `retrying`'s), outside a loop.
APT_UPDATE = re.compile(r"^\s*(?:sudo\s+)?apt(?:-get)?\s[^\n;&|]*(?<![\w-])update(?![\w-])")
# `retrying TRIES WORDS COMMAND...` (the function the shipped script defines) asks COMMAND again, TRIES times in
# all, while its output matches WORDS, an extended regular expression ("" for any failure).
RETRYING = re.compile(r"^\s*retrying\s+(\d+)\s+(\"[^\"]*\"|'[^']*'|\S+)\s+(.*)$")
NO_UNSET = re.compile(r"^\s*set\s+-[a-zA-Z]*u", re.M)  # bash's -u: an unset variable's expansion ends the script
DEFINES_RETRYING = re.compile(r"^\s*(?:function\s+)?retrying\s*\(\)")
ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_]\w*)=(\"[^\"$`]*\"|'[^']*'|[^\s\"'$`;&|]*)\s*$")
LOOP_WORD = re.compile(r"^\s*(?:for|while|until)\b")  # a loop's download may fail: it is a probe's
LOOP_STARTS, LOOP_ENDS = re.compile(r"^\s*(?:for|while|until)\b(?!.*\bdone\b)"), re.compile(r"^\s*done\b")
# What apt-get update answers while another apt holds the package lists (the process: apt-daily's).
LISTS_LOCKED = "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 1093 (apt-get)"
# A line that adds the deadsnakes PPA to apt's sources (its package lists come with the next update).
DEADSNAKES_SOURCE = re.compile(r"ppa\.launchpad(?:content)?\.net/deadsnakes/ppa/ubuntu|add-apt-repository\b[^\n]*"
                               r"\bppa:deadsnakes/ppa")
PPA_HOST = "ppa.launchpadcontent.net"
PPA_UNREACHABLE = (f"E: Failed to fetch https://{PPA_HOST}/deadsnakes/ppa/ubuntu/dists/jammy/InRelease  Could not "
                   f"connect to {PPA_HOST}:443 (185.125.190.80), connection timed out")
ERROR_ON_ANY = re.compile(r"(?<!\S)--error-on=any(?!\S)")
FINAL_RELEASE_CHECK = re.compile(r"sys\.version_info\.releaselevel\s*!=\s*.final.")  # a check that fails the boot
CURL_HOST = re.compile(r"\bcurl\b[^\n]*?https?://([\w.-]+)")  # the host a curl command downloads from
VENV = re.compile(r"(?<![\w/.-])(?:/usr/bin/)?(python3(?:\.\d+)?)\s+-m\s+venv\b")
NFS_MOUNT = re.compile(r"\bmount\b[^\n]*\s-t\s+nfs4?\b|\bmount\.nfs4?\b")
# An entry echoed onto /etc/fstab: its mount point and type; and a mount of a mount point by its entry.
FSTAB_ENTRY = re.compile(r"""^\s*echo\s+(["'])\S+\s+(/[^\s"']*)\s+(\w+)\s[^"']*\1\s*>>\s*/etc/fstab\b""")
MOUNT_POINT = re.compile(r"\bmount\s+(/[\w/.-]+)(?=\s*(?:$|[;&|]))")
HASHED_INSTALL = re.compile(r"\bpip install\b[^\n]*--require-hashes -r (\S+)")
# A hashed install that is its line's own command (or `retrying`'s), outside a loop: unless asked again, it fails
# where a download is cut off midway (pip's hash check finds it, and pip does not ask again), which machines that
# each download gigabytes meet; here the largest wheel's always is.
HASHED_INSTALL_COMMAND = re.compile(r"^\s*(?:sudo\s+)?\S*\bpip3?(?:\.\d+)?\s+install\b[^\n]*--require-hashes")
HASHES_DIFFER = ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. If you have updated the "
                 "package versions, please update the hashes. Otherwise, examine the package contents carefully; "
                 "someone may have tampered with them.\n    {pin}:\n        Expected sha256 {expected}\n"
                 "             Got        e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
LOCK_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", re.M)


def boot(script: str, image: ImageFacts, project: Path, unreachable: frozenset[str] = frozenset()
         ) -> tuple[str | None, bool | None, str | None]:
    """What stops the script first on a machine of `image` (each step needs what the steps before it installed),
    in the words the machine's log would have (None when nothing does), and whether the Python of the venv it
    makes has its C headers, and its version (None: no venv). `project`: the source user-data installs;
    `unreachable`: hosts the machine cannot reach."""
    requires_python = tomllib.loads((project / "pyproject.toml").read_text())["project"]["requires-python"]
    packages, venvs = set(image.installed), []
    failure = _first_failure(script, image, project, requires_python, packages, venvs, unreachable)
    if not venvs:
        return failure, None, None
    return failure, f"python{'.'.join(venvs[-1].split('.')[:2])}-dev" in packages, venvs[-1]


def _first_failure(script: str, image: ImageFacts, project: Path, requires_python: str, packages: set[str],
                   venvs: list[str], unreachable: frozenset[str]) -> str | None:
    """The first step that fails, adding what each step installs to `packages` and each venv's Python's
    version to `venvs`."""
    venv_python, loops, variables, retrying_defined, fstab = None, 0, {}, False, {}
    archive, deadsnakes = dict(image.archive), False  # what apt finds: the image's archive, and the PPA once updated
    for line in script.replace("\\\n", " ").splitlines():  # continued lines joined
        line = line.split("#", 1)[0] if not line.startswith("#!") else ""
        loops = max(0, loops + bool(LOOP_STARTS.match(line)) - bool(LOOP_ENDS.match(line)))
        if assignment := ASSIGNMENT.match(line):
            variables[assignment[1]] = assignment[2].strip("\"'")
        retrying_defined = retrying_defined or bool(DEFINES_RETRYING.match(line))
        retried = RETRYING.match(line)
        if retried and not retrying_defined:  # a function is a command once its definition has run
            return "retrying: command not found"
        unset = retried and _variable(retried[2])
        if unset and unset not in variables and NO_UNSET.search(script):
            return f"{unset}: unbound variable"
        command = retried[3] if retried else line
        if not loops and not LOOP_WORD.match(line) and (host := _unreachable_download(line, unreachable)):
            return f"curl: (28) Failed to connect to {host} port 443 after 30001 ms: Timeout was reached"
        deadsnakes = deadsnakes or bool(DEADSNAKES_SOURCE.search(line))
        if APT_UPDATE.match(command):
            if not _asked_again(LISTS_LOCKED, loops, retried, variables):
                return LISTS_LOCKED
            if deadsnakes and PPA_HOST in unreachable:  # apt-get update only warns, unless told --error-on=any
                if ERROR_ON_ANY.search(command):
                    return PPA_UNREACHABLE
            elif deadsnakes:  # apt installs the highest version its sources have
                archive.update({package: version for package, version in image.deadsnakes.items()
                                if package not in archive or Version(version) > Version(archive[package])})
        for install in APT_INSTALL.finditer(line):
            for package in (word for word in install[1].split() if not word.startswith("-")):
                if package not in archive and package not in packages:
                    return f"E: Unable to locate package {package}"
                packages.add(package)
        if entry := FSTAB_ENTRY.match(line):
            fstab[entry[2]] = entry[3]
        if unknown := next((point for point in MOUNT_POINT.findall(line) if point not in fstab), None):
            return f"mount: {unknown}: can't find in /etc/fstab."
        by_entry = [point for point in MOUNT_POINT.findall(line) if fstab[point].startswith("nfs")]
        if (NFS_MOUNT.search(line) or by_entry) and "nfs-common" not in packages:
            return ("mount: bad option; for several filesystems (e.g. nfs, cifs) you might need a /sbin/mount.nfs4 "
                    "helper program (nfs-common is not installed)")
        for python in VENV.findall(line):
            failure = _venv_failure(python, image, archive, packages, requires_python)
            if failure:
                return failure
            venv_python = _version(python, image, archive)
            venvs.append(venv_python)
        if FINAL_RELEASE_CHECK.search(line) and venv_python and Version(venv_python).is_prerelease:
            return f"error: Python {venv_python} is not a final release"
        hashed = HASHED_INSTALL.search(line)
        if hashed and venv_python:
            lock = (project / hashed[1].removeprefix("/opt/imagenet18/")).read_text()
            lacking = lock_gaps(lock, venv_python)
            if lacking:
                return ("ERROR: In --require-hashes mode, all requirements must have their versions pinned with ==. "
                        f"These do not: {', '.join(lacking)}")
            pin, expected = re.search(r"^(torch==\S+) \\\n\s+--hash=sha256:(\w+)", lock, re.M).groups()
            cut_off = HASHES_DIFFER.format(pin=pin, expected=expected)
            if HASHED_INSTALL_COMMAND.match(command) and not _asked_again(cut_off, loops, retried, variables):
                return cut_off
    return None


def _unreachable_download(line: str, unreachable: frozenset[str]) -> str | None:
    return next((host for host in CURL_HOST.findall(line) if host in unreachable), None)


def _asked_again(failure: str, loops: int, retried: re.Match | None, variables: dict[str, str]) -> bool:
    """Whether a command that fails with these words is asked again: inside a loop, or by `retrying` with two
    tries or more and WORDS that match them (WORDS as the shell expands it: a quoted or bare word, or a variable
    set earlier in the script; unset, it is empty and matches any failure)."""
    if loops or not retried:
        return bool(loops)
    variable = _variable(retried[2])
    words = variables.get(variable, "") if variable else retried[2].strip("\"'")
    return int(retried[1]) >= 2 and re.search(words, failure) is not None


def _variable(word: str) -> str | None:
    """The variable a shell word is the expansion of ("$name", ${name}, ...), if it is one."""
    expansion = re.fullmatch(r"(\"?)\$\{?([A-Za-z_]\w*)\}?\1", word)
    return expansion[2] if expansion else None


def lock_gaps(lock: str, python: str) -> list[str]:
    """The dependencies that the packages a hashed lock pins need on Python `python` (a full version, as markers
    read it) and the lock lacks, each with what asks for it: pip then refuses the whole install. Read from the
    packages' metadata as installed here."""
    locked = {canonicalize_name(name) for name in LOCK_PIN.findall(lock)}
    environment = {"python_full_version": python, "python_version": ".".join(python.split(".")[:2]), "extra": ""}
    return sorted({f"{requirement} (from {name})" for name in locked
                   for requirement in map(Requirement, metadata.distribution(name).requires or [])
                   if (requirement.marker is None or requirement.marker.evaluate(environment))
                   and canonicalize_name(requirement.name) not in locked})


def _venv_failure(python: str, image: ImageFacts, archive: dict[str, str], packages: set[str],
                  requires_python: str) -> str | None:
    minor = ".".join(image.python3.split(".")[:2]) if python == "python3" else python.removeprefix("python")
    if python != "python3" and python not in packages:
        return f"{python}: command not found"
    venv_packages = {f"python{minor}-venv"} | ({"python3-venv"} if python == "python3" else set())
    if not venv_packages & packages:
        return ("The virtual environment was not created successfully because ensurepip is not available. On "
                f"Debian/Ubuntu systems, you need to install the python{minor}-venv package")
    # pip compares Requires-Python with the interpreter's major.minor.micro alone (3.11.0rc1 counts as 3.11.0).
    release = ".".join(map(str, Version(_version(python, image, archive)).release[:3]))
    if release not in SpecifierSet(requires_python):
        return f"ERROR: Package 'imagenet18' requires a different Python: {release} not in '{requires_python}'"
    return None


def _version(python: str, image: ImageFacts, archive: dict[str, str]) -> str:
    """The full version of an interpreter of the image (python3's own, or one apt installs from `archive`)."""
    minor = ".".join(image.python3.split(".")[:2]) if python == "python3" else python.removeprefix("python")
    return image.python3 if image.python3.startswith(f"{minor}.") else archive[python]


SYSTEMCTL_RESTART = re.compile(r"\bsystemctl\s+(?:-[-\w=]+\s+)*(?:try-)?restart\s+([^\n;&|]*)")
SNAP_RESTART = re.compile(r"\bsnap\s+restart\s+(?:-[-\w=]+\s+)*([\w-]+)")
# systemctl appends .service to a name without one of these.
UNIT_TYPES = {"service", "socket", "device", "mount", "automount", "swap", "target", "path", "timer", "slice", "scope"}


def restarted_units(script: str) -> frozenset[str]:
    """The systemd units `systemctl restart` or `snap restart` restarts anywhere in the script (comments aside);
    a snap's service is named as its unit, snap.NAME.NAME.service."""
    lines = script.replace("\\\n", " ").splitlines()  # continued lines joined
    code = "\n".join(re.sub(r"(^|\s)#.*", "", line) for line in lines if not line.startswith("#!"))  # comments out
    named = [unit for words in SYSTEMCTL_RESTART.findall(code) for unit in words.split() if not unit.startswith("-")]
    units = {unit if unit.rsplit(".", 1)[-1] in UNIT_TYPES else f"{unit}.service" for unit in named}
    return frozenset(units | {f"snap.{name}.{name}.service" for name in SNAP_RESTART.findall(code)})


def shutdown_timer_s(script: str) -> float | None:
    """Seconds until `shutdown -h +MINUTES` or `systemd-run --on-active=SPAN` fires; the earliest if several."""
    delays = [60.0 * int(m) for m in re.findall(r"\bshutdown\s+(?:-[a-zA-Z]+\s+)*\+(\d+)", script)]
    for span in re.findall(r"\bsystemd-run\b[^\n]*?--on-active[= ]['\"]?([0-9a-z]+)", script):
        parts = re.findall(r"(\d+)\s*([a-z]*)", span)
        if parts and all(unit in SYSTEMD_UNITS for _, unit in parts):
            delays.append(float(sum(int(n) * SYSTEMD_UNITS[unit] for n, unit in parts)))
    return min(delays, default=None)


def fstab_entries(script: str) -> dict[str, str]:
    """The mount points of the entries the script adds to /etc/fstab, with their types."""
    return {entry[2]: entry[3] for line in script.splitlines() if (entry := FSTAB_ENTRY.match(line))}


PER_BOOT_SCRIPT = re.compile(r"^\s*cat\s*>\s*(/var/lib/cloud/scripts/per-boot/[\w.-]+)\s*<<-?\s*(['\"]?)(\w+)\2\s*$",
                             re.M)


def rearms_shutdown(script: str) -> bool:
    """Whether the script writes a per-boot script that calls `shutdown -h` and makes it executable: cloud-init
    runs /var/lib/cloud/scripts/per-boot/'s executable files at every boot (cc_scripts_per_boot), not this one."""
    for written in PER_BOOT_SCRIPT.finditer(script):
        body = script[written.end():].split(f"\n{written[3]}\n", 1)[0]
        modes = re.findall(rf"\bchmod\s+([0-7]{{3,4}}|[ugoa]*\+x)\s+{re.escape(written[1])}(?!\S)", script)
        executable = any(mode.endswith("+x") or any(int(digit) & 1 for digit in mode[-3:]) for mode in modes)
        if executable and re.search(r"\bshutdown\s+-h\b", body):
            return True
    return False
