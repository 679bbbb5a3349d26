"""Per-request and per-iteration records, summaries and plots."""
