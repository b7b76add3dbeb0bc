"""What the deploy runs on the instance, as linted and type-checked Python.

Each module runs with the instance's interpreter from the deployed repository:
`cd REMOTE_DIR && "$INSTANCE_VENV/bin/python" -m deploy.instance.NAME ...`, so `kernel`
imports as it does for the services (the current directory is on `sys.path` with `-m`).
Nothing here imports the laptop side of `deploy` (the image copies only this folder and
`deploy/__init__.py`).

`plan`, `manifest` and `requirements` use the standard library only and import nothing from
the project: the deploy also feeds them to the instance's interpreter on standard input
(`python - ARGS`) when the code is not synced yet (preflight, dry runs). `converge` and
`health` run after the sync and use `kernel.config` and `kernel.supervisor`; `ports` is run
by scripts/start_services.sh before it starts a supervisord.
"""
