"""TaskVine compatibility: what a program written for ndcctools.taskvine relies on (issue 14)."""
