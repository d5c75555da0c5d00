"""What every stage shares, with nothing heavier than PyYAML: writing files atomically, reaching the Hub (or
failing fast without it), keeping secrets out of records, the layout of a run directory (`RunDir`), the user
errors every stage raises, and what the scripts do with them.

- `errors`: `UserError`, the base of every error a user can fix, and `RunStopped`.
- `files`: atomic writes and SHA-256 of files.
- `hub`: Hugging Face Hub access that fails in seconds.
- `redaction`: secrets never written down.
- `run_dir`: `RunDir`, the name of every file a run writes.
- `cli`: the scripts' logging, and user errors printed as one message.
"""
