"""The private network every container joins; Docker's DNS on it resolves service names and weight aliases."""

from __future__ import annotations

import pulumi
import pulumi_docker as docker

from components.common import type_token
from stackconfig.names import LABEL_STACK, network_name


class PrivateNetwork(pulumi.ComponentResource):
    name: pulumi.Output[str]

    def __init__(self, name: str, *, stack: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(type_token("PrivateNetwork"), name, None, opts)
        self.network = docker.Network(
            "net",
            docker.NetworkArgs(
                name=network_name(stack),
                driver="bridge",
                labels=[docker.NetworkLabelArgs(label=LABEL_STACK, value=stack)],
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.name = self.network.name
        self.register_outputs({"name": self.name})
