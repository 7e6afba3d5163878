"""mlserve: the whole serving stack on a Docker host or a Kubernetes cluster, driven by validated stack config.

Config is read and validated once (stackconfig/settings.py) before any resource exists;
an invalid value stops the program with a message naming the key. The `target` key picks the
components: components/ for one Docker host, components/kubernetes/ for a cluster.
"""

import pulumi

from stackconfig import settings as config

settings = config.load()

if settings.kubernetes is not None:
    from components.kubernetes import stack as cluster

    for name, value in cluster.exports(settings, cluster.declare(settings)).items():
        pulumi.export(name, value)
else:
    from components.stack import declare, entry_url, mlflow_url

    stack = declare(settings)
    pulumi.export("entryUrl", entry_url(settings))
    pulumi.export("mlflowUrl", mlflow_url(settings))
    pulumi.export("replicaNames", stack.replicas.names)
    pulumi.export("networkName", stack.network.name)
    pulumi.export("mysqlPassword", pulumi.Output.secret(stack.metadata.password))
    pulumi.export("mysqlRootPassword", pulumi.Output.secret(stack.metadata.root_password))
    pulumi.export("minioAccessKey", stack.artifacts.access_key)
    pulumi.export("minioSecretKey", pulumi.Output.secret(stack.artifacts.secret_key))
    # name -> key of every API key /invocations accepts (`pulumi stack output --show-secrets apiKeys`).
    pulumi.export("apiKeys", stack.balancer.api_keys)
