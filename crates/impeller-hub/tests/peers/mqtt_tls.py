#!/usr/bin/env python3
"""A third-party MQTT client (paho-mqtt over Python's ssl) at the hub's embedded broker served
over TLS: a device logs in over TLS trusting the hub's CA and publishes one message; the same
client in plain MQTT, and over TLS trusting nothing but the system's roots, gets no session.

Reads one JSON argument: {"host", "port", "ca", "id", "secret", "message" (hex)}.
Prints one line per check and exits 1 if any failed. The Rust test then checks the store.
"""

import json
import ssl
import sys
import threading

import paho.mqtt.client as mqtt

WAIT = 5.0
failures = []


def check(ok, what):
    print(("ok: " if ok else "FAILED: ") + what, flush=True)
    if not ok:
        failures.append(what)


def session(cfg, tls):
    """Connects as the device; returns (client, connected) with the loop running."""
    connected = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg["id"], protocol=mqtt.MQTTv311)
    c.username_pw_set(cfg["id"], cfg["secret"])
    c.on_connect = lambda _c, _u, _f, rc, _p: rc == 0 and connected.set()
    if tls == "hub ca":
        c.tls_set(ca_certs=cfg["ca"], cert_reqs=ssl.CERT_REQUIRED)
    elif tls == "system roots":
        c.tls_set(cert_reqs=ssl.CERT_REQUIRED)
    try:
        c.connect(cfg["host"], cfg["port"], keepalive=30)
    except (OSError, ssl.SSLError):
        return c, False
    c.loop_start()
    connected.wait(WAIT)
    return c, connected.is_set()


def main():
    cfg = json.loads(sys.argv[1])
    c, ok = session(cfg, "hub ca")
    check(ok, "the device logs in over TLS, trusting the hub's CA")
    if ok:
        info = c.publish(f"impeller/v1/devices/{cfg['id']}/events", bytes.fromhex(cfg["message"]), qos=1)
        info.wait_for_publish(WAIT)
        check(info.is_published(), "its message is acknowledged over TLS")
    c.loop_stop()
    c.disconnect()

    c, ok = session(cfg, None)
    check(not ok, "plain MQTT to the TLS port gets no session")
    c.loop_stop()
    c, ok = session(cfg, "system roots")
    check(not ok, "TLS without the hub's CA does not trust the hub")
    c.loop_stop()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
