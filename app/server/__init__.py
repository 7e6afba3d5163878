"""The replica: MLflow's scoring protocol in front of `models:/<name>@<alias>`.

Run as `python -m app.server`, configured only by the `contract.ENV_*`
environment variables (see `config.py`).
"""
