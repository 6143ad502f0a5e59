"""Review a predict run in the browser: verdicts in SQLite, exports, precision (no torch)."""
