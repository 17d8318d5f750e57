"""Command-line tools: vine_benchmark, vine_status."""
