"""User tasks, one file each; every function here is what one CLI command runs."""
