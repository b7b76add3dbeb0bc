"""The deploy: from this machine to a Vast.ai instance over SSH (`./deploy_vast.sh`).

Laptop side: `cli` (the command parser and registry), `settings` (the deploy's view of
`kernel.config`), `remote` (the one way anything reaches the instance), the phases
`preflight`, `lock`, `sync`, `converge`, `tunnel`, the `commands` and the `fleet`; renting
boxes: `vast` (the SDK), `offers` and `autopilot`.
Instance side: `deploy.instance`, run there by the image's interpreter. See docs/deploy.md.

No side effects on import: the image copies `deploy/instance/` and imports it without the
laptop-side modules.
"""
