"""`llm-batch`, the command line over the HTTP API (imports only kernel.config)."""
