"""How a command written for a real machine is rewritten to run here: machine paths to local directories,
private IPs to loopback, torchrun's master port to a free local one."""

import re
from dataclasses import dataclass

TORCHRUN_PORT = re.compile(r"(--master[_-]port[= ])29500\b")


@dataclass
class Rewrite:
    paths: dict[str, str]  # machine path -> local path
    private_ips: list[str]  # of every instance: all become 127.0.0.1
    master_port: int

    def apply(self, script: str) -> str:
        # Longest prefix first, and only whole path components: /mnt/data, /mnt/data/x, not /mnt/database.
        prefixes = sorted(self.paths, key=len, reverse=True)
        if prefixes:
            pattern = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, prefixes)) + r")(?![\w.-])")
            script = pattern.sub(lambda m: self.paths[m[1]], script)
        if self.private_ips:
            ips = "|".join(map(re.escape, sorted(self.private_ips, key=len, reverse=True)))
            script = re.sub(rf"(?<![\w.])({ips})(?![\w]|\.\d)", "127.0.0.1", script)
        return TORCHRUN_PORT.sub(rf"\g<1>{self.master_port}", script)
