"""`appliance …` commands. Each subcommand imports its heavy parts only when it runs."""

from appliance.cli.main import main

__all__ = ["main"]
