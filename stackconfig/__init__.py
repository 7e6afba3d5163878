"""The stack's configuration and the names derived from it, below every consumer.

`settings` validates the stack config into frozen dataclasses; `names` derives the names
that several parts must agree on (container names, role labels, network aliases, upstream
names). `components/` (the Pulumi program), `nginx/` (the conf renderer) and the test tooling
all import from here; nothing here imports them.
"""
