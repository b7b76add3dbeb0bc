"""Project scripts (the deploy's instance-side Python lives in `deploy.instance`)."""
