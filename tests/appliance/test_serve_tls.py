"""HTTPS on the public listener: the real openai client over TLS, plain HTTP sent to the TLS port, a
certificate renewed during live streams, certificates refused at start, and a trusted proxy.

One server for the module: HTTPS and plain HTTP on 127.0.0.1 with a generated certificate, and
127.0.0.6 trusted as a proxy (forwarded_allow_ips).
"""

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import httpx
import openai
import pytest
from cryptography import x509

from appliance.keys import KeyStore
from appliance.ops.certificates import CertificateError, fingerprint, generate, host_names
from tests.appliance.conftest import add_keys, make_config, start_server
from tests.appliance.ops.test_certificates import operator_certificate

STREAMS = 8
TOKENS = 24
HEADER_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    generate(folder / "cert.pem", folder / "key.pem", host_names())
    (folder / "first.pem").write_bytes((folder / "cert.pem").read_bytes())  # what clients were given
    return folder


@pytest.fixture(scope="module")
def server(tiny_model_path, tls_dir, tmp_path_factory):
    state = tmp_path_factory.mktemp("tls-state")
    config = make_config(tiny_model_path, state, tls_cert=tls_dir / "cert.pem", tls_key=tls_dir / "key.pem",
                         https_port=0, metrics_port=0, forwarded_allow_ips=["127.0.0.6"], header_timeout_s=HEADER_TIMEOUT_S)
    live = start_server(config)
    add_keys(live, config.keys_db_path)
    yield live
    live.stop()


def verifying(*pem_files) -> ssl.SSLContext:
    return ssl.create_default_context(cadata="".join(p.read_text() for p in pem_files))


def served_fingerprint(response: httpx.Response) -> str:
    ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
    return fingerprint(x509.load_der_x509_certificate(ssl_object.getpeercert(True)))


def test_the_openai_client_over_https_chat_stream_and_embeddings(server, tls_dir):
    with httpx.Client(verify=verifying(tls_dir / "first.pem")) as http:
        client = openai.OpenAI(base_url=server.https_url + "/v1", api_key=server.key, http_client=http, max_retries=0)
        chat = client.chat.completions.create(model=server.model, max_tokens=4,
                                              messages=[{"role": "user", "content": "Hi"}])
        assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens >= 1
        chunks = list(client.chat.completions.create(model=server.model, max_tokens=4, stream=True,
                                                     messages=[{"role": "user", "content": "Hi"}]))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        vectors = client.embeddings.create(model=server.model, input=["one", "two"])
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 0
    # Plain HTTP stays on loopback for apps on the box, with the same keys.
    assert httpx.get(server.base_url + "/v1/models", headers=server.headers()).status_code == 200
    listeners = server.app.listeners()
    assert listeners["https"] == f"https://127.0.0.1:{server.app.https_port}" and listeners["tls"]["trust_file"] == str(tls_dir / "cert.pem")


def test_status_shows_the_endpoints_and_the_certificate_to_trust(server, tls_dir, capsys):
    from appliance.cli.main import main as cli_main

    cli_main(["status", "--socket", str(server.app.config.control_socket)])
    out = capsys.readouterr().out
    fingerprint_now = server.app.tls.info.fingerprint_sha256
    assert f"listen    https://127.0.0.1:{server.app.https_port}, {server.base_url};" in out
    assert f"tls       SHA-256 {fingerprint_now}\n          clients trust {tls_dir / 'cert.pem'}; valid until" in out


def test_an_unverified_client_is_refused_by_its_own_tls_stack(server):
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(server.https_url + "/health", verify=ssl.create_default_context())


def test_plain_http_to_the_tls_port_gets_nothing_usable_and_the_listener_keeps_serving(server, tls_dir):
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.app.https_port), timeout=5) as raw:
            raw.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = b""
            while chunk := raw.recv(4096):
                answer += chunk
        assert not answer.startswith(b"HTTP/") and b"status" not in answer
    response = httpx.get(server.https_url + "/health", verify=verifying(tls_dir / "first.pem"))
    assert response.status_code == 200


def test_a_client_that_never_finishes_its_handshake_is_hung_up_on(server):
    with socket.create_connection(("127.0.0.1", server.app.https_port), timeout=HEADER_TIMEOUT_S + 5) as raw:
        started = time.monotonic()
        try:
            assert raw.recv(1) == b""
        except ConnectionResetError:
            pass  # an abort: hung up all the same
        assert HEADER_TIMEOUT_S - 0.5 <= time.monotonic() - started <= HEADER_TIMEOUT_S + 3


def stream_completion(url: str, key: str, model: str, verify: ssl.SSLContext, results: dict, index: int) -> None:
    body = {"model": model, "prompt": "Count:", "max_tokens": TOKENS, "stream": True, "ignore_eos": True}
    with httpx.Client(verify=verify, timeout=60) as client:
        with client.stream("POST", url + "/v1/completions", json=body,
                           headers={"Authorization": f"Bearer {key}"}) as response:
            results[index] = {"fingerprint": served_fingerprint(response), "events": []}
            for line in response.iter_lines():
                if line.startswith("data: "):
                    results[index]["events"].append(line[6:])


def wait_until(condition, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_renewed_certificate_reaches_new_connections_while_streams_finish_on_the_old(server, tls_dir):
    old = (tls_dir / "first.pem").read_text()
    both = ssl.create_default_context(cadata=old)
    results: dict[int, dict] = {}
    stall = server.app.config.fault_stall_file
    active = server.service.pool.active
    # The engine holds still (fault injection) while the streams are open: they are in flight while the files change.
    stall.touch()
    threads = [threading.Thread(target=stream_completion, args=(server.https_url, server.key, server.model, both,
                                                                results, i)) for i in range(STREAMS)]
    try:
        wait_until(lambda: server.service.readiness.fault.stalling, "the engine to stall")
        for thread in threads:
            thread.start()
        wait_until(lambda: len(active.inflight) == STREAMS, "every stream to reach the engine")
        renewed = generate(tls_dir / "cert.pem", tls_dir / "key.pem", host_names())
        assert server.app.request_reload()
        both.load_verify_locations(cadata=(tls_dir / "cert.pem").read_text())
        with httpx.Client(verify=both) as fresh:
            with fresh.stream("GET", server.https_url + "/health") as response:
                assert response.status_code == 200
                assert served_fingerprint(response) == renewed.fingerprint_sha256
        assert len(active.inflight) == STREAMS  # all still open on their old connections
    finally:
        stall.unlink(missing_ok=True)
        for thread in threads:
            thread.join(60)
    first = x509.load_pem_x509_certificate(old.encode())
    for i in range(STREAMS):
        events = results[i]["events"]
        assert results[i]["fingerprint"] == fingerprint(first) != renewed.fingerprint_sha256
        assert events[-1] == "[DONE]", events[-3:]
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
        assert sum(1 for e in events[:-1] if json.loads(e)["choices"]) == TOKENS
    assert server.app.listeners()["tls"]["fingerprint_sha256"] == renewed.fingerprint_sha256
    (tls_dir / "first.pem").write_text((tls_dir / "cert.pem").read_text())  # later tests trust the current one


def test_only_a_trusted_proxy_says_who_the_client_is(server, tls_dir):
    store = KeyStore(server.app.config.keys_db_path)
    try:
        _, key = store.create("office-only", allowed_networks=["198.51.100.0/24"])
    finally:
        store.close()
    forwarded = {"Authorization": f"Bearer {key}", "X-Forwarded-For": "198.51.100.7"}

    def status_from(address: str) -> int:
        transport = httpx.HTTPTransport(local_address=address, verify=verifying(tls_dir / "first.pem"))
        with httpx.Client(transport=transport) as client:
            return client.get(server.https_url + "/v1/models", headers=forwarded).status_code

    assert status_from("127.0.0.6") == 200  # the proxy in forwarded_allow_ips is believed
    assert status_from("127.0.0.7") == 403  # anyone else's X-Forwarded-For is not


def test_an_expired_or_other_hosts_certificate_is_refused_at_start(tiny_model_path, tmp_path):
    now = datetime.now(timezone.utc)
    cert, key = operator_certificate(tmp_path, ["localhost"], now - timedelta(days=91), now - timedelta(days=1))
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "serve", "--model", str(tiny_model_path), "--host", "127.0.0.1",
         "--port", "0", "--https-port", "0", "--metrics-port", "0", "--state-dir", str(tmp_path / "state"),
         "--control-socket", str(tmp_path / "control.sock"), "--tls-cert", str(cert), "--tls-key", str(key)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"appliance serve: error: the certificate {cert} expired on" in result.stderr, result.stderr
    assert not (tmp_path / "state").exists()  # refused before anything else started
    from appliance.serve import Appliance

    other, other_key = operator_certificate(tmp_path, ["www.other.org"], now - timedelta(days=1),
                                            now + timedelta(days=30), name="other")
    with pytest.raises(CertificateError, match=r"is for www\.other\.org, not for this host"):
        Appliance(make_config(tiny_model_path, tmp_path / "state", tls_cert=other, tls_key=other_key, https_port=0))
