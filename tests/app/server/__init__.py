"""One test module per module of app/server."""
