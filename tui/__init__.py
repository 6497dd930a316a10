"""The operator TUI; talks to the service only over the control socket."""
