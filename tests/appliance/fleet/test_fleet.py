"""The fleet end to end: three appliances on loopback ports (tiny model) behind a real smg, keys in a real
PostgreSQL. One fleet for the module; the tests run in order and the last one kills a box."""

import threading
import time

import httpx
import pytest

from appliance.fleet.gateway_api import GatewayAPI
from appliance.keys import KeyStore
from tests.appliance.fleet.fleet_harness import Gateway, describe_gateway, fleet_command, join, make_box, make_gateway

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def fleet(postgres_server, tiny_model_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet")
    database_url = postgres_server.new_database()
    KeyStore(database_url).close()  # the schema, once, before three boxes open it at the same moment
    gateway = make_gateway(folder)
    described = describe_gateway(gateway, folder / "gateway-box")  # the gateway runs beside box0
    boxes = [make_box(f"box{i}", folder / f"box{i}", tiny_model_path, database_url,
                      described if i == 0 else folder / "none.json") for i in range(3)]
    try:
        for box in boxes:
            box.start()
        gateway.start()
        for box in boxes:
            box.wait_ready()
            join(box, gateway)
        yield Fleet(boxes, gateway, database_url, described.parent / "gateway-admin.key")
    finally:
        gateway.stop()
        for box in boxes:  # nothing left to drain: killed, which is quicker than their drain
            box.kill()


class Fleet:
    def __init__(self, boxes, gateway: Gateway, database_url: str, admin_key_file):
        self.boxes, self.gateway, self.database_url, self.admin_key_file = boxes, gateway, database_url, admin_key_file

    def key(self, name: str, **limits) -> str:
        with self.boxes[0].control() as control:
            return control.create_key(name, **limits)["api_key"]


def chat(url: str, key: str | None, content: str = "Hello", max_tokens: int = 4, timeout_s: float = 60) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + CHAT, headers=headers, timeout=timeout_s, json={
        "model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})


def test_a_key_made_on_one_box_works_on_every_box_and_a_revocation_holds_everywhere_at_once(fleet):
    api_key = fleet.key("app")  # made through box0's control socket
    for url in [box.url for box in fleet.boxes] + [fleet.gateway.url]:
        assert chat(url, api_key).status_code == 200, url
    with fleet.boxes[1].control() as control:  # revoked through another box
        key_id = api_key.split("-")[2]
        control.revoke_key(key_id)
    for url in [box.url for box in fleet.boxes] + [fleet.gateway.url]:
        response = chat(url, api_key)
        assert response.status_code == 403 and response.json()["error"]["code"] == "key_not_active", url


def test_a_stream_through_the_gateway_arrives_chunk_by_chunk(fleet):
    from openai import OpenAI

    client = OpenAI(base_url=fleet.gateway.url + "/v1", api_key=fleet.key("streamer"), max_retries=0)
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Count"}],
                                            max_tokens=8, stream=True, extra_body={"ignore_eos": True})
    chunks = [chunk for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(chunks) == 8


def test_while_postgresql_is_down_a_recently_verified_key_works_and_others_get_503(fleet, postgres_server):
    box = fleet.boxes[1]
    known, unseen = fleet.key("known-before-outage"), fleet.key("unseen-before-outage")
    assert chat(box.url, known, max_tokens=1).status_code == 200  # verified on this box
    postgres_server.stop()
    try:
        assert chat(box.url, known, max_tokens=1).status_code == 200
        refused = chat(box.url, unseen, max_tokens=1)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "key_store_unavailable"
        assert int(refused.headers["retry-after"]) > 0
        assert box.metric("appliance_key_store_up") == 0
        assert box.metric("appliance_key_store_outage_refusals_total") >= 1
        with box.control() as control:
            assert control.status()["key_store"]["reachable"] is False
    finally:
        postgres_server.resume()
    deadline = time.monotonic() + 20
    while chat(box.url, unseen, max_tokens=1).status_code != 200:  # the database answers again
        assert time.monotonic() < deadline, "the box did not use the database again"
        time.sleep(0.5)
    assert box.metric("appliance_key_store_up") == 1


def test_a_client_without_a_key_gets_nothing_through_the_boxes_probe_key(fleet):
    """smg sends a box's own (fleet-probe) key when the client sent none: that key may only list models."""
    response = chat(fleet.gateway.url, None)
    assert response.status_code == 403 and "probe key" in response.json()["error"]["message"]


def test_wrong_keys_through_the_gateway_lock_out_no_one(fleet):
    """smg does not pass the client's address on: every client arrives from the gateway's, which is exempt."""
    for _ in range(25):  # past auth_failures_per_minute (20)
        assert chat(fleet.gateway.url, "sk-app-00000000-guess", max_tokens=1).status_code == 401
    assert chat(fleet.gateway.url, fleet.key("after-guesses"), max_tokens=1).status_code == 200


def test_an_rpm_limit_holds_across_the_three_boxes(fleet):
    api_key = fleet.key("limited", rpm_limit=4)
    statuses = [chat(fleet.boxes[i % 3].url, api_key, max_tokens=1).status_code for i in range(6)]
    assert statuses == [200] * 4 + [429] * 2


def test_the_box_beside_the_gateway_sees_every_box(fleet):
    status = fleet_command(fleet.boxes[0], "status")
    assert status["membership"]["worker_url"] == fleet.boxes[0].url and "admin_key" not in status["membership"]
    view = status["gateway"]
    assert view["error"] is None and view["url"] == fleet.gateway.url
    boxes = {b["url"]: b for b in view["boxes"]}
    assert set(boxes) == {box.url for box in fleet.boxes}
    for box in boxes.values():
        assert box["healthy"] and box["circuit"] == "closed" and box["host"]
        assert box["running"] is not None and box["kv_usage"] is not None  # read from the box's own metrics
    with fleet.boxes[2].control() as control:
        other = control.fleet()
    assert other["gateway"] is None and other["membership"]["worker_url"] == fleet.boxes[2].url
    assert fleet.boxes[2].metric("appliance_key_store_up") == 1  # {shared="true"}: the fleet's PostgreSQL answers


async def test_the_tui_fleet_screen_shows_every_box_and_leaves_and_joins_with_confirmation(fleet):
    from textual.widgets import DataTable, Input

    from appliance.control.client import ControlClient
    from tests.tui.conftest import show_screen, text, wait_for
    from tui.app import ApplianceTUI
    from tui.screens.fleet_forms import JoinFormScreen
    from tui.widgets.confirm import ConfirmScreen

    box = fleet.boxes[0]
    app = ApplianceTUI(ControlClient(box.folder / "control.sock"))
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: app.state.latest is not None, what="the first snapshot")
        await show_screen(pilot, "5", "fleet")
        table = app.screen.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 3, what="three boxes")
        assert "shared PostgreSQL" in text(app.screen.query_one("#fleet-keys"))
        assert box.url in text(app.screen.query_one("#fleet-membership"))
        await pilot.press("l")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: "left its fleet" in text(app.screen.query_one("#fleet-membership"))
                       and table.row_count == 2, timeout_s=30, what="the box gone from the gateway")
        await pilot.press("j")
        assert isinstance(app.screen, JoinFormScreen)
        assert app.screen.query_one("#advertise", Input).value == box.url  # from the service's own listener
        app.screen.query_one("#gateway", Input).value = fleet.gateway.url
        app.screen.query_one("#key_file", Input).value = str(fleet.admin_key_file)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: table.row_count == 3, timeout_s=40, what="the box back behind the gateway")
    with box.control() as control:
        assert control.fleet()["membership"]["worker_url"] == box.url


def prefix_hits(fleet) -> float:
    return sum(box.metric("vllm:prefix_cache_hits_total") for box in fleet.boxes)


def run_prefix_workload(fleet, url: str, api_key: str, tag: str) -> float:
    """Four long system prompts, three requests each, interleaved; the prefix-cache hits it caused, in blocks.

    Four prompts over three boxes: sent one after another in turn, round robin takes each prompt to every box once.
    """
    prompts = [f"{tag} policy {p}: " + " ".join(f"rule {tag}{p}-{i} applies to every answer." for i in range(40))
               for p in range(4)]
    before = prefix_hits(fleet)
    for round_ in range(3):
        for p, system in enumerate(prompts):
            response = httpx.post(url + CHAT, headers={"Authorization": f"Bearer {api_key}"}, timeout=60, json={
                "model": "tiny", "max_tokens": 1, "messages": [
                    {"role": "system", "content": system}, {"role": "user", "content": f"question {round_}"}]})
            assert response.status_code == 200
    return prefix_hits(fleet) - before


def test_the_same_long_system_prompt_lands_on_the_same_box(fleet, tmp_path):
    api_key = fleet.key("prefix")
    cache_aware = run_prefix_workload(fleet, fleet.gateway.url, api_key, "ca")
    round_robin_gateway = make_gateway(tmp_path, policy="round_robin")
    round_robin_gateway.start()
    try:
        with KeyStore(fleet.database_url) as keys, GatewayAPI(round_robin_gateway.url, round_robin_gateway.admin_key) as api:
            for box in fleet.boxes:
                _, probe_key = keys.create("rr probe", purpose="fleet-probe")
                api.add_worker(box.url, probe_key, {})
            for box in fleet.boxes:
                api.wait_registered(box.url, 30)
        round_robin = run_prefix_workload(fleet, round_robin_gateway.url, api_key, "rr")
    finally:
        round_robin_gateway.stop()
    assert cache_aware >= 2 * round_robin and cache_aware > 0, (cache_aware, round_robin)


class SteadyLoad:
    """Clients sending non-streamed requests through the gateway, one after another (`pause_s` apart), until stopped.

    Light on purpose: the boxes, the gateway and the clients share this machine's cores, and a box that
    restarts under a saturating load takes a minute to load its model.
    """

    def __init__(self, url: str, api_key: str, clients: int = 1, pause_s: float = 0.2):
        self.url, self.api_key, self.pause_s = url, api_key, pause_s
        self.results: list[tuple[int, str]] = []  # (status, routed box)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, client: int) -> None:
        n = 0
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                n += 1
                try:
                    response = http.post(self.url + CHAT, headers={"Authorization": f"Bearer {self.api_key}"}, json={
                        "model": "tiny", "max_tokens": 2,
                        "messages": [{"role": "user", "content": f"client {client} request {n}"}]})
                    self.results.append((response.status_code, response.headers.get("x-smg-routed-worker-id", "")))
                except httpx.HTTPError as e:
                    self.errors.append(f"{type(e).__name__}: {e}")
                self._stop.wait(self.pause_s)

    def wait_for(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.results) + len(self.errors) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    @property
    def failed(self) -> list:
        return [r for r in self.results if r[0] != 200] + self.errors


def test_a_rolling_upgrade_of_all_three_boxes_under_steady_load_fails_no_request(fleet):
    api_key = fleet.key("steady")
    with SteadyLoad(fleet.gateway.url, api_key) as load:
        load.wait_for(5)
        for box in fleet.boxes:  # as the operator does it: `appliance fleet leave`, upgrade, `appliance fleet join`
            left = fleet_command(box, "leave")  # out of the rotation; its requests finish
            assert left["still_in_flight"] == 0
            box.stop()  # the upgrade: systemctl stop, a new process on the same state, start
            box.start()
            box.wait_ready()
            joined = fleet_command(box, "join", fleet.gateway.url, "--admin-key-file", str(fleet.admin_key_file),
                                   "--advertise", box.url)
            assert joined["membership"]["worker_url"] == box.url
            seen = len(load.results)
            load.wait_for(seen + 3)
    assert not load.failed, load.failed[:5]
    assert len(load.results) >= 15
    with GatewayAPI(fleet.gateway.url, fleet.gateway.admin_key) as api:  # every upgraded box is back in rotation
        assert {w["url"] for w in api.workers() if w["is_healthy"]} == {box.url for box in fleet.boxes}


def test_a_box_killed_under_load_loses_no_non_streamed_request(fleet):
    api_key = fleet.key("kill")
    with SteadyLoad(fleet.gateway.url, api_key, clients=3, pause_s=0.0) as load:
        load.wait_for(6)
        busiest = max(fleet.boxes, key=lambda b: sum(1 for _, routed in load.results if routed == b.url))
        busiest.kill()
        seen = len(load.results)
        load.wait_for(seen + 12)
    assert not load.failed, load.failed[:5]
    after = load.results[seen + 3:]
    assert after and all(routed != busiest.url for _, routed in after)
