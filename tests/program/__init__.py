"""Mock tests of the Pulumi program (issue 3)."""
