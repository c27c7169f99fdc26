"""A hostile agent: floods one topic with garbage QoS 1 messages at a given rate.

Run as a separate process (``python -m tests.harness.flood HOST PORT TOPIC RATE SECONDS
[CLIENT_ID USERNAME PASSWORD]``) so that the flood does not share the test's event loop. It
prints one JSON line when done: ``{"sent": N, "acked": N, "seconds": S, "lost_link": bool}``
(``acked``: PUBACKs received; ``lost_link``: the broker closed the connection, e.g. because
the agent's credentials were revoked).
"""

from __future__ import annotations

import json
import os
import sys
import time

import paho.mqtt.client as paho

CHUNK = 200  # messages published between checks of the pace


def main(argv: list[str]) -> int:
    host, port, topic, rate, seconds = (
        argv[0],
        int(argv[1]),
        argv[2],
        float(argv[3]),
        float(argv[4]),
    )
    client_id, username, password = [*argv[5:8], None, None, None][:3]
    acked = 0
    lost = False

    def on_publish(*_: object) -> None:
        nonlocal acked
        acked += 1

    stopping = False

    def on_disconnect(*_: object) -> None:
        nonlocal lost
        lost = lost or not stopping

    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"flood-{os.getpid()}",
        protocol=paho.MQTTv5,
    )
    if username:
        client.username_pw_set(username, password)
    client.on_disconnect = on_disconnect
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(host, port, keepalive=30)
    client.loop_start()
    garbage = os.urandom(150)
    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds and not lost:
        ahead = sent - elapsed * rate
        if ahead > 0:
            time.sleep(ahead / rate)
            continue
        for _ in range(CHUNK):
            client.publish(topic, garbage, qos=1)
        sent += CHUNK
    flood_s = time.monotonic() - start
    deadline = time.monotonic() + 30
    while acked < sent and time.monotonic() < deadline and not lost:
        time.sleep(0.05)
    stopping = True
    client.disconnect()
    client.loop_stop()
    report = {"sent": sent, "acked": acked, "seconds": round(flood_s, 3), "lost_link": lost}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
