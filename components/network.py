"""The private network every container joins; Docker's DNS on it resolves service names and weight aliases."""

from __future__ import annotations

import pulumi
import pulumi_docker as docker

from components.common import PROJECT, type_token


class PrivateNetwork(pulumi.ComponentResource):
    name: pulumi.Output[str]

    def __init__(self, name: str, *, stack: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(type_token("PrivateNetwork"), name, None, opts)
        self.network = docker.Network(
            "net",
            docker.NetworkArgs(
                name=f"{PROJECT}-{stack}",
                driver="bridge",
                labels=[docker.NetworkLabelArgs(label=f"{PROJECT}.stack", value=stack)],
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.name = self.network.name
        self.register_outputs({"name": self.name})
