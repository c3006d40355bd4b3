"""Where moto 5.2.5 answers differently from AWS in a way our backend depends on, corrected in place."""

from moto.ssm.models import Command


def fix_send_command_targets() -> None:
    """moto adds every instance of the region to a command sent with InstanceIds and no Targets (its empty
    tag filter matches all instances); AWS runs the command on the instances named, and only those."""
    targets_to_instances = Command._get_instance_ids_from_targets

    def named_targets_only(self: Command) -> list[str]:
        return targets_to_instances(self) if self.targets else []

    Command._get_instance_ids_from_targets = named_targets_only
