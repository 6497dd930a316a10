"""The control socket: its routes, its client, peer credentials, the audit log, events, tasks and snapshots.

`appliance.control.client` is the only module the TUI and the CLI import from here; it stays free of
torch, transformers and the engine so that `appliance tui` starts in well under a second.
"""
