"""The local stack: the stack the Pulumi program declares, run as real processes on loopback.

    python -m procstack up [--stack dev] [--set replicas=5 --set 'weights=[1,1,3,1,1]'] [--reset]
    python -m procstack status
    python -m procstack promote                 # trainer by hand: new version, alias moved
    python -m procstack load --users 8 --run-time 20s
    python -m procstack report --max-replicas 4 --duration 10
    python -m procstack down [--purge]

`up` runs __main__.py under mocks (mockrun) and starts every declared container as a process
(standins.py says how each image is stood in for); run again with changed config it adds,
replaces or removes only what changed, as `pulumi up` would. Needs root: the DNS stand-in
binds 127.0.0.11:53 (the resolver the nginx conf names) and the container hostnames go into a
marked block of /etc/hosts. One local stack at a time per machine.
"""
