"""The laptop side of the deploy: settings, SSH, converge, fleet and renting boxes."""
