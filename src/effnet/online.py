"""Is a server reachable? One short TCP connect, so an offline machine learns it in seconds.

Client libraries (huggingface_hub, wandb) retry for a minute or more before giving up; effnet asks
first and picks the offline path itself.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse


def reachable(url: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to the URL's host and port opens within `timeout` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        return True
    except (OSError, TypeError):
        return False
