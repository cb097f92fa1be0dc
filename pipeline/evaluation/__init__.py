"""Scoring only: a results file in, numbers and pictures out, with the standard PRW /
CUHK-SYSU protocols (``protocols.md`` of the shared docs). No network runs here."""
