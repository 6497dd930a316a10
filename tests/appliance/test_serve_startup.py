"""Startup: before a model is loaded the API answers 503 with Retry-After; a bad model exits non-zero."""

import asyncio

import pytest

from appliance.errors import APIError
from appliance.serving.service import Service
from tests.appliance.conftest import make_config


def test_requests_before_the_model_is_loaded_get_503_with_retry_after(tmp_path):
    service = Service(make_config(tmp_path / "model", tmp_path, metrics_port=0))
    with pytest.raises(APIError) as e:
        asyncio.run(service.admission.admit("any-key", "any-model", None))
    assert e.value.status == 503 and e.value.code == "no_model_loaded"
    response = e.value.to_response()
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
    ok, body = service.readiness.ready()
    assert not ok and body["reasons"]
    assert service.readiness.health()[0]  # alive while starting


def test_a_missing_model_makes_serve_exit_non_zero_and_say_why(tmp_path, caplog):
    from appliance.serve import Appliance

    app = Appliance(make_config(tmp_path / "no-such-model", tmp_path, metrics_port=0))
    code = asyncio.run(asyncio.wait_for(app.run(install_signal_handlers=False), 60))
    assert code == 1
    assert app.service.pool.state == "failed" and "no-such-model" in app.service.pool.load_error
    assert any("could not be loaded" in r.getMessage() for r in caplog.records)
    ok, body = app.service.readiness.ready()
    assert not ok and any("failed to load" in reason for reason in body["reasons"])
