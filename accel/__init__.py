"""Acceleration techniques, one file each; a script opts in with a line or two."""
