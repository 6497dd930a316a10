"""Priority through the API: a request's own `priority`, else its key's (`keys create --priority`), reaches the
engine's scheduler (tests/engine/test_scheduler.py holds its order), and /metrics shows queue time per priority."""

import httpx


def queue_counts(server) -> dict[str, float]:
    """appliance_request_queue_time_seconds_count by priority label."""
    counts = {}
    for line in httpx.get(server.metrics_url, timeout=10).text.splitlines():
        if line.startswith("appliance_request_queue_time_seconds_count{"):
            labels, value = line.rsplit(" ", 1)
            priority = labels.split('priority="')[1].split('"')[0]
            counts[priority] = counts.get(priority, 0) + float(value)
    return counts


def test_queue_time_is_shown_per_priority_of_the_request_or_its_key(live_server, http):
    before = queue_counts(live_server)
    _, secret = live_server.service.keys.create("priority-seven", priority=7, weight=2.5)
    body = {"model": live_server.model, "prompt": "a", "max_tokens": 1}
    assert http.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert http.post("/v1/completions", json={**body, "priority": -3}).status_code == 200
    chat = {"model": live_server.model, "messages": [{"role": "user", "content": "a"}], "max_tokens": 1, "priority": -3}
    assert http.post("/v1/chat/completions", json=chat).status_code == 200
    after = queue_counts(live_server)
    assert after.get("7", 0) - before.get("7", 0) == 1  # the key's default
    assert after.get("-3", 0) - before.get("-3", 0) == 2  # the request's own
    refused = http.post("/v1/completions", json={**body, "priority": "high"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "priority"
