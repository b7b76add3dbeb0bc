"""Project scripts; `scripts.instance` holds the Python a deploy runs on the instance."""
