"""Who may call the server: the restricted-API rules `serve start`, the container launcher
(`python -m sketchkit.serving.launch`) and the manifests give tritonserver (serving/README.md,
"Who may call the server", "Threat model"). Below both launchers, so neither imports the other."""

from __future__ import annotations

import re

from sketchkit import wire
from sketchkit.errors import SketchkitError


class AccessError(SketchkitError):
    """A server key that tritonserver's rules cannot carry."""


# behind the key: inference (Triton 2.51's JSON parser and shape checks live there) and the
# read-only statistics (the client lists the served models with them for its error messages)
KEYED_APIS = ("inference", "statistics")
CLOSED_APIS = ("shared-memory", "model-repository", "trace", "logging")  # management
# The closed APIs' rule: a header no client can send, so it may be public. Over HTTP/1.1 a header
# value cannot hold a line feed; gRPC metadata names are lower case (an upper-case name in an
# HTTP/2 request resets the stream), so neither protocol can match it (tests/test_hostile_local.py).
CLOSED_HEADER = "X-Sketchkit-Closed"
CLOSED_VALUE = "closed\nto every client"
# what /proc/PID/cmdline shows instead of `x-sketchkit-key=<key>` (serving/launch.py): a rule no
# client can match either, so a launch that went wrong fails closed
HIDDEN_KEY_RULE = "X-Sketchkit-Key=hidden\nfrom other users"


def restricted_api_flags(key: str, management: bool = False) -> list[str]:
    """Inference and statistics need the key header on HTTP and gRPC; the management APIs (shared
    memory, the repository, trace and log settings) are closed (a header no client can send),
    or, with `management`, opened to holders of the key. Health, metadata and model configs
    stay open: read-only, and what a client reads before it infers."""
    if not re.fullmatch(r"[A-Za-z0-9._~-]{16,256}", key):
        raise AccessError(f"the server key must be 16..256 of A-Z a-z 0-9 . _ ~ - (${wire.KEY_ENV}, {wire.key_file()})")
    keyed = KEYED_APIS + (CLOSED_APIS if management else ())
    rules = [f"{','.join(keyed)}:{wire.KEY_HEADER}={key}"]
    if not management:
        rules.append(f"{','.join(CLOSED_APIS)}:{CLOSED_HEADER}={CLOSED_VALUE}")
    return [f"--{flag}={rule}" for rule in rules for flag in ("http-restricted-api", "grpc-restricted-protocol")]
