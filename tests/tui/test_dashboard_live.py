"""The dashboard against a real service: live numbers, and riding out a restart of the service."""

import asyncio

import httpx

from appliance.control.client import ControlClient
from tests.appliance.conftest import start_server
from tests.tui.conftest import text, wait_for
from tui.app import ApplianceTUI
from tui.widgets.gauge import Gauge
from tui.widgets.panels import EnginePanel, HostPanel
from tui.widgets.top_bar import TopBar


def engine_text(app) -> str:
    panel = app.screen.query_one(EnginePanel)
    return "\n".join(text(w) for w in panel.query("Static, Gauge"))


def summary(app) -> str:
    return text(app.screen.query_one(TopBar).query_one("#summary"))


def banner(app) -> str:
    widget = app.screen.query_one(TopBar).query_one("#banner")
    return text(widget) if widget.display else ""


async def test_dashboard_numbers_change_when_requests_run(service, control):
    secret = control.create_key("dashboard-test")["api_key"]
    app = ApplianceTUI(ControlClient(service.app.config.control_socket))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "ready" in summary(app), what="the first snapshot of a ready service")
        assert service.model in summary(app) and "requests 0 " in engine_text(app)
        assert str(app.screen.query_one(EnginePanel).border_subtitle) == "torch · cpu float32"  # the path that runs it
        assert "No GPU" in text(app.screen.query_one("#gpu-notice"))  # these machines have none
        # the gauge renders to its laid-out width, and the first layout can come after the first snapshot
        await wait_for(pilot, lambda: "cores" in text(app.screen.query_one(HostPanel).query_one("#cpu", Gauge)),
                       what="the host panel's CPU gauge")

        async def one_request(client: httpx.AsyncClient) -> None:
            response = await client.post("/v1/completions", json={
                "model": service.model, "prompt": "hello there", "max_tokens": 24, "ignore_eos": True})
            assert response.status_code == 200, response.text

        seen_generating = []

        def generating() -> bool:
            tokens = app.state.latest["engine"]["generation_tokens_per_s"]
            if tokens > 0:
                seen_generating.append(text(app.screen.query_one("#tokens")))
            return bool(seen_generating)

        async with httpx.AsyncClient(base_url=service.base_url, headers={"Authorization": f"Bearer {secret}"},
                                     timeout=30) as client:
            load = asyncio.gather(*(one_request(client) for _ in range(6)))
            await wait_for(pilot, generating, what="tokens/s out above zero on the dashboard")
            await load
        await wait_for(pilot, lambda: "requests 6 " in engine_text(app), what="the request count to reach 6")
        # The graph behind tokens/s drew the burst: some column is not blank.
        assert any(v for v in app.screen.query_one("#tokens-history").values)
        assert "out 0.0" not in seen_generating[0]


async def test_says_disconnected_and_recovers_when_the_service_comes_back(service):
    socket_path = service.app.config.control_socket
    app = ApplianceTUI(ControlClient(socket_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: "ready" in summary(app), what="the first connection")
        service.stop()
        await wait_for(pilot, lambda: "disconnected — retrying" in summary(app), what="the disconnected notice")
        # The stream ends cleanly at shutdown; the retries then find no socket and say what to do.
        await wait_for(pilot, lambda: "is the service running?" in banner(app), what="advice in the banner")
        await pilot.press("2", "3", "1")  # still answers keys while the service is away
        assert app.current_mode == "dashboard"

        restarted = start_server(service.app.config)
        try:
            await wait_for(pilot, lambda: banner(app) == "" and "not ready" not in summary(app), timeout_s=15,
                           what="the TUI to reconnect by itself")
        finally:
            restarted.stop()
