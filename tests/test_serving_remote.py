"""Remote ``image_url`` fetching: refused by default, allowlisted hosts checked after DNS and after redirects.

The only network traffic is on loopback: an image server started here on 127.0.0.1. Policies
for public names are tested with a fake resolver (no DNS query leaves the machine).
"""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest

from longllava_sdk import Pipeline
from longllava_sdk.errors import ConfigError
from longllava_sdk.serving import ServerSettings, create_app
from longllava_sdk.serving.api_errors import APIError
from longllava_sdk.serving.remote import RemotePolicy
from serving_fixtures import data_url, png_bytes, running_server, user

# Part of the compatibility subset: CI also runs it on the oldest allowed server stack.
pytestmark = pytest.mark.compat

MODEL = "tiny"
IMAGE = png_bytes(colour=(10, 200, 30))


class _ImageServer(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        type(self).hits.append(self.path)
        port = self.server.server_address[1]
        routes = {
            "/img.png": (200, IMAGE, {}),
            "/to-localhost": (302, b"", {"Location": f"http://localhost:{port}/img.png"}),
            "/to-other-loopback": (302, b"", {"Location": f"http://127.0.0.2:{port}/img.png"}),
            "/to-self": (307, b"", {"Location": "/img.png"}),
            "/loop": (302, b"", {"Location": "/loop"}),
            "/big": (200, b"\x89PNG" + b"\x00" * 300_000, {}),
            "/missing": (404, b"", {}),
        }
        status, body, headers = routes.get(self.path, (404, b"", {}))
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ImageServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return Pipeline.from_pretrained(tiny_checkpoint)


def _ask(server, url):
    return server.client().chat.completions.create(
        model=MODEL, max_tokens=6, temperature=0,
        messages=[user("What is shown?", {"type": "image_url", "image_url": {"url": url}})])


def _refusal(server, url):
    with pytest.raises(openai.APIStatusError) as caught:
        _ask(server, url)
    return caught.value


def test_nothing_is_fetched_without_an_allowlist(pipe, image_server):
    base, _ = image_server
    _ImageServer.hits.clear()
    with running_server(create_app(pipe, ServerSettings(model_name=MODEL))) as server:
        error = _refusal(server, f"{base}/img.png")
    assert error.status_code == 400 and error.body["code"] == "remote_url_refused"
    assert _ImageServer.hits == []


def test_an_allowlisted_loopback_address_is_fetched_and_redirects_are_checked_again(pipe, image_server):
    base, port = image_server
    _ImageServer.hits.clear()
    settings = ServerSettings(model_name=MODEL, allow_remote=("127.0.0.1",), max_image_mb=0.1)
    with running_server(create_app(pipe, settings)) as server:
        fetched = _ask(server, f"{base}/img.png")
        inline = _ask(server, data_url(IMAGE))
        assert fetched.choices[0].message.content == inline.choices[0].message.content
        assert fetched.usage.prompt_tokens == inline.usage.prompt_tokens
        assert _ask(server, f"{base}/to-self").usage.prompt_tokens == inline.usage.prompt_tokens

        # Redirects to a host name or an address that is not allowlisted: refused before connecting.
        error = _refusal(server, f"{base}/to-localhost")
        assert error.body["code"] == "remote_url_refused" and "localhost is not on" in error.body["message"]
        error = _refusal(server, f"{base}/to-other-loopback")
        assert error.body["code"] == "remote_url_refused" and "127.0.0.2" in error.body["message"]
        assert _refusal(server, f"{base}/loop").body["code"] == "remote_fetch_failed"
        assert _refusal(server, f"{base}/missing").body["message"].endswith("HTTP 404")
        assert _refusal(server, f"{base}/big").status_code == 413
        # Credentials in the URL and other ports of other addresses stay refused.
        assert _refusal(server, f"http://user:pw@127.0.0.1:{port}/img.png").body["code"] == "remote_url_refused"
    assert "/to-localhost" in _ImageServer.hits and _ImageServer.hits.count("/img.png") == 2  # direct + /to-self


def test_a_listed_host_name_that_resolves_to_loopback_is_refused(pipe, image_server):
    _, port = image_server
    _ImageServer.hits.clear()
    with running_server(create_app(pipe, ServerSettings(model_name=MODEL, allow_remote=("localhost",)))) as server:
        error = _refusal(server, f"http://localhost:{port}/img.png")
    assert error.body["code"] == "remote_url_refused" and "loopback" in error.body["message"]
    assert _ImageServer.hits == []


# -- the policy, with a fake resolver ---------------------------------------------------------------
def _vet(policy, url):
    return asyncio.run(policy.vet(httpx.URL(url), param="p"))


def _resolver(table):
    async def resolve(host, port):
        if host not in table:
            raise OSError("no such host")
        return table[host]
    return resolve


def test_every_resolved_address_must_be_allowed():
    table = {"images.example.org": ["93.184.216.34"],
             "mixed.example.org": ["93.184.216.34", "10.0.0.5"],
             "rebind.example.org": ["::ffff:127.0.0.1"],
             "cdn.example.org": ["169.254.169.254"],
             "intranet.example.org": ["10.1.2.3"]}
    policy = RemotePolicy(["images.example.org", "*.example.org", "10.1.0.0/16"], resolver=_resolver(table))
    assert _vet(policy, "https://images.example.org/a.png") == "93.184.216.34"
    assert _vet(policy, "https://intranet.example.org/a.png") == "10.1.2.3"  # its network is listed
    for url, words in [
        ("https://mixed.example.org/a.png", "10.0.0.5"),            # one private address is enough
        ("https://rebind.example.org/a.png", "127.0.0.1"),         # IPv4-mapped loopback
        ("https://cdn.example.org/latest/meta-data", "169.254.169.254"),  # cloud metadata
        ("https://example.org/a.png", "not on this server's allowlist"),  # *.x matches sub-domains only
        ("https://other.test/a.png", "not on this server's allowlist"),
        ("https://nowhere.example.org/a.png", "does not resolve"),
        ("ftp://images.example.org/a.png", "only http and https"),
        ("http://93.184.216.34/a.png", "unlisted"),                 # an address literal needs a network entry
    ]:
        with pytest.raises(APIError, match="remote URL refused") as caught:
            _vet(policy, url)
        assert words in caught.value.message, (url, caught.value.message)


def test_the_allowlist_must_be_hosts_or_networks():
    with pytest.raises(ConfigError, match="neither a host name"):
        RemotePolicy(["http://example.org/"])
    assert not RemotePolicy([]).enabled
