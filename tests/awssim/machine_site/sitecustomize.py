"""On PYTHONPATH of the commands the simulator plays while its machines' boots take time (`set_boot`): the
simulator's time is compressed (a boot of minutes takes seconds), so torchrun's default wait for its rendezvous
(900 s: LaunchConfig's, shorter than a first boot that waits on apt's locks and downloads gigabytes of wheels can
take) is compressed in proportion. A torchrun told how long to wait (--rdzv-conf timeout=...) waits that long."""

import os
import sys

if (seconds := os.environ.get("AWSSIM_TORCHRUN_DEFAULT_WAIT_S")) and sys.orig_argv[1:3] == [
        "-m", "torch.distributed.run"]:
    from torch.distributed.launcher import api

    set_up = api.LaunchConfig.__post_init__

    def compressed(config: api.LaunchConfig) -> None:
        if config.rdzv_timeout == -1:
            config.rdzv_configs.setdefault("timeout", int(seconds))
        set_up(config)

    api.LaunchConfig.__post_init__ = compressed
