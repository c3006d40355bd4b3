"""An SSM agent's pings until it registers, as amazon-ssm-agent makes them: one as it starts with its machine and,
if that one fails (the machine has no way out yet), hibernation: no ping for 5 minutes, then three 5 minutes apart,
three 10 minutes apart, and so on, the interval doubling up to an hour (3.3's agent/hibernation/hibernation.go:
initialPingRate 5*60, backoffRate 3, multiplier 2, HibernationMaxBackoffIntervalMinutes 60 by default; its
scheduler pings at once when scheduled, each span lasting three intervals; older agents doubled sooner). The
worker enters it when its first health ping (UpdateInstanceInformation) fails for any reason. A restart of the
agent's service starts a new agent, which pings at once."""

import os
from dataclasses import dataclass

HIBERNATION_S = float(os.environ.get("AWSSIM_AGENT_HIBERNATION_S", "300"))
BACKOFF_RATE = 3  # pings at one interval before it doubles
MAX_INTERVAL_FACTOR = 12  # an hour at AWS's 5 minutes


@dataclass
class AgentLife:
    first_ping_at: float  # time.time() of the agent's first ping, a while after its machine runs
    hibernation_s: float = HIBERNATION_S
    registered: bool = False
    hibernated: bool = False  # its first ping failed
    restarted: bool = False  # its service was restarted while it hibernated
    next_ping_at: float = 0.0
    interval_s: float = 0.0
    pings_at_interval: int = 0

    @property
    def state(self) -> str:
        return "registered" if self.registered else "hibernating" if self.hibernated else "starting"

    def advance(self, now: float, reaches_out: bool, restarts_on_the_way_out: bool) -> None:
        """Where the agent is at `now` on a running machine: `reaches_out`, whether the machine has a way out;
        `restarts_on_the_way_out`, whether its user data restarts the agent's service once it has one."""
        if self.registered or now < self.first_ping_at:
            return
        if not self.hibernated:
            self.registered = reaches_out
            self.hibernated = not reaches_out
            self.next_ping_at, self.interval_s = now + self.hibernation_s, self.hibernation_s
        elif reaches_out and restarts_on_the_way_out:
            self.registered = self.restarted = True
        elif now >= self.next_ping_at:
            self.registered = reaches_out
            self.next_ping_at += self.interval_s
            self.pings_at_interval += 1
            if self.pings_at_interval == BACKOFF_RATE:
                self.interval_s = min(2 * self.interval_s, MAX_INTERVAL_FACTOR * self.hibernation_s)
                self.pings_at_interval = 0
