"""The stack on a real Docker engine: a stand-in for `pulumi up` (test and local-run tooling).

The Pulumi CLI and its provider plugins cannot be had where this project is tested, and no
registry is reachable. This package takes the resources the program declares under mocks
(`mockrun`) and applies them through the Docker API as pulumi-docker would (`apply`, `mapping`,
`build`), after building every image a registry would serve from Debian's packages and PyPI
(`standins`). The program never imports it. Usage: `python -m enginestack --help`.
"""
