"""Reusable widgets: a gauge bar, a history graph, the top bar, modals."""
