"""The Hub and W&B reachability checks go through the proxy the environment names, as the downloads and
uploads do: behind an HTTPS_PROXY the recipe no longer refuses what huggingface_hub could fetch."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import recipe.common.hub
from recipe.tracking.wandb_run import choose_wandb_mode


class Proxy(BaseHTTPRequestHandler):
    """An HTTP proxy that answers every plain request itself (as the Hub would) and refuses tunnels."""

    seen: list[tuple[str, str]] = []

    def do_HEAD(self):
        self.seen.append(("HEAD", self.path))
        self.send_response(200)
        self.end_headers()

    def do_CONNECT(self):
        self.seen.append(("CONNECT", self.path))
        self.send_response(502)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy(monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Proxy.seen = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    def use(variable: str | None) -> None:
        for name in ("HTTP_PROXY", "HTTPS_PROXY"):
            monkeypatch.delenv(name, raising=False)
        if variable:
            monkeypatch.setenv(variable, f"http://127.0.0.1:{server.server_port}")
        close_session()  # huggingface_hub's client reads the proxy variables when it is created
        recipe.common.hub._endpoint_reachable.cache_clear()

    yield use
    server.shutdown()
    close_session()
    recipe.common.hub._endpoint_reachable.cache_clear()


def test_the_hub_is_reached_through_the_proxy(proxy, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.example.invalid")  # a name that resolves nowhere but at the proxy
    proxy(None)
    assert not recipe.common.hub.hub_reachable()
    proxy("HTTP_PROXY")
    assert recipe.common.hub.hub_reachable()
    assert Proxy.seen == [("HEAD", "http://hub.example.invalid/")]


def test_https_to_the_hub_goes_through_https_proxy(proxy, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.invalid")
    proxy("HTTPS_PROXY")
    assert not recipe.common.hub.hub_reachable()  # this proxy refuses the tunnel ...
    assert Proxy.seen == [("CONNECT", "hub.example.invalid:443")]  # ... but it was asked


def test_wandb_goes_online_through_the_proxy(proxy, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://wandb.example.invalid")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    proxy(None)
    assert choose_wandb_mode() == ("offline", "http://wandb.example.invalid is not reachable")
    proxy("HTTP_PROXY")
    assert choose_wandb_mode() == ("online", None)
    assert Proxy.seen == [("HEAD", "http://wandb.example.invalid")]
