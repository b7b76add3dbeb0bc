"""The shared kernel: what the API (`app`) and the workers (`workers`) both build on.

Settings, logging set-up, the S3 and Temporal client factories, the supervisord client,
the batch contract (workflow inputs and results, object keys, the batch status model),
request-line parsing, JSONL helpers and the reading of shard results. No side effects on
import; nothing here imports `app` or `workers` (an import-linter contract checks it).
"""
