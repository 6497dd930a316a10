"""systemd's STATUS line, written every few seconds by `serve`: it must not die while no model is loaded."""

from appliance.serve import status_line
from appliance.serving.service import Service
from tests.appliance.conftest import make_config


def test_status_line_without_a_loaded_model_says_why_instead_of_failing(tmp_path):
    # A sequential hot swap has no active model between the old one's unload and the new one's load;
    # the status loop used to call stats() on None there and stop updating STATUS until a restart.
    service = Service(make_config(tmp_path / "model", tmp_path, metrics_port=0))
    service.pool.state = "loading"
    assert status_line(service) == "not ready: the model is loading"


def test_status_line_of_a_serving_model_has_the_engines_load(live_server):
    line = status_line(live_server.service)
    assert line.startswith("serving; running ") and "waiting" in line and "KV" in line
