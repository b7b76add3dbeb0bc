"""What `deploy_vast.sh` runs on the instance, as linted and type-checked Python.

Each module runs with the instance's interpreter from the deployed repository:
`cd REMOTE_DIR && "$INSTANCE_VENV/bin/python" -m scripts.instance.NAME ...`, so `kernel`
imports as it does for the services (the current directory is on `sys.path` with `-m`).

`plan`, `manifest` and `requirements` use the standard library only and import nothing from
the project: `deploy_vast.sh` also feeds them to the instance's interpreter on standard input
(`python - ARGS`) when the code is not synced yet (preflight, dry runs), so the laptop needs
no Python. `converge` and `health` run after the sync and use `kernel.config` and
`kernel.supervisor`.
"""
