"""The TUI in a real terminal (tmux) against a real service: every screen, help, quit."""

import shutil

import pytest

from tests.tui.tmux_smoke import run_smoke


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_tmux_smoke(service, size):
    # These machines have no GPU: the dashboard counts as drawn once its notice says so.
    panes = run_smoke(service.app.config.control_socket, size, dashboard_shows="No GPU")
    dashboard = panes[0]
    assert service.model in dashboard and "Engine ·" in dashboard and "Host" in dashboard
    assert all(len(line) <= size[0] for line in dashboard.splitlines())
