#!/usr/bin/env python3
"""A third-party MQTT client (paho-mqtt) tries what a device must not do at the hub's embedded
broker, and what it may do, as a control for each refusal.

Reads one JSON argument: {"host", "port", "api", "admin_token",
  "a": {"id", "secret", "own_message" (hex), "others_message" (hex)}, "b": {"id", "secret"},
  "c": {"id", "secret"}}
where b has a retained desired state and c is revoked by this script through the API.
Prints one line per check and exits 1 if any failed. The Rust test then checks the store.
"""

import json
import sys
import threading
import time
import urllib.error
import urllib.request

import paho.mqtt.client as mqtt

WAIT = 5.0
failures = []


def check(ok, what):
    print(("ok: " if ok else "FAILED: ") + what, flush=True)
    if not ok:
        failures.append(what)


class Device:
    """One paho client with events recorded for the checks."""

    def __init__(self, host, port, client_id, user, password):
        self.connack = threading.Event()
        self.rc = None
        self.disconnected = threading.Event()
        self.subacks = {}
        self.pubacks = set()
        self.messages = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if user is not None:
            c.username_pw_set(user, password)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *_: self.disconnected.set()
        c.on_subscribe = self._on_subscribe
        c.on_publish = lambda _c, _u, mid, *_: self.pubacks.add(mid)
        c.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.client = c
        c.connect_async(host, port, keepalive=30)
        c.loop_start()
        self.connack.wait(WAIT)

    def _on_connect(self, _c, _u, _flags, reason_code, _props):
        self.rc = reason_code
        self.connack.set()

    def _on_subscribe(self, _c, _u, mid, reason_codes, _props):
        self.subacks[mid] = reason_codes

    def accepted(self):
        return self.rc is not None and not self.rc.is_failure

    def subscribe(self, topic):
        """The reason code the broker granted, or None without an answer."""
        _, mid = self.client.subscribe(topic, qos=1)
        until = time.time() + WAIT
        while mid not in self.subacks and time.time() < until:
            time.sleep(0.02)
        codes = self.subacks.get(mid)
        return codes[0] if codes else None

    def publish(self, topic, payload):
        """True when the broker acknowledged the publish (PUBACK)."""
        info = self.client.publish(topic, payload, qos=1)
        until = time.time() + WAIT
        while info.mid not in self.pubacks and time.time() < until and not self.disconnected.is_set():
            time.sleep(0.02)
        return info.mid in self.pubacks

    def wait_for(self, topic, seconds=WAIT):
        until = time.time() + seconds
        while time.time() < until:
            if any(t == topic for t, _ in self.messages):
                return True
            time.sleep(0.02)
        return False

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def api(cfg, method, path, auth=None):
    req = urllib.request.Request(cfg["api"] + path, method=method)
    if auth:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def basic(dev):
    import base64

    return "Basic " + base64.b64encode(f"{dev['id']}:{dev['secret']}".encode()).decode()


def topic(device, kind):
    return f"impeller/v1/devices/{device}/{kind}"


def main():
    cfg = json.loads(sys.argv[1])
    host, port = cfg["host"], cfg["port"]
    a, b, c = cfg["a"], cfg["b"], cfg["c"]
    connect = lambda client_id, user, password: Device(host, port, client_id, user, password)

    # Wrong token, no token, another device's client id, unknown device.
    d = connect(a["id"], a["id"], "not-the-secret")
    check(d.rc is not None and d.rc.is_failure and "user name or password" in str(d.rc).lower(),
          f"a wrong secret is refused with 'bad user name or password' (got {d.rc})")
    d.close()
    d = connect(a["id"], None, None)
    check(d.rc is not None and d.rc.is_failure, f"no credentials are refused (got {d.rc})")
    d.close()
    d = connect(b["id"], a["id"], a["secret"])
    check(d.rc is not None and d.rc.is_failure, f"a's credentials under b's client id are refused (got {d.rc})")
    d.close()

    # Device b, the owner of the retained desired state, reads it: the control for the refusals below.
    dev_b = connect(b["id"], b["id"], b["secret"])
    check(dev_b.accepted(), f"b connects with its secret (got {dev_b.rc})")
    code = dev_b.subscribe(topic(b["id"], "desired"))
    check(code is not None and not code.is_failure, f"b may subscribe to its own desired state (got {code})")
    check(dev_b.wait_for(topic(b["id"], "desired")), "b receives its retained desired state")
    dev_b.close()

    dev_a = connect(a["id"], a["id"], a["secret"])
    check(dev_a.accepted(), f"a connects with its secret (got {dev_a.rc})")
    for filter in [topic(b["id"], "desired"), "impeller/v1/devices/+/desired", "impeller/v1/devices/#", "#",
                   topic(a["id"], "+"), topic(b["id"], "telemetry")]:
        code = dev_a.subscribe(filter)
        check(code is not None and code.is_failure, f"a may not subscribe to {filter} (got {code})")
    time.sleep(1.0)
    check(not dev_a.messages, f"a received nothing of others: {dev_a.messages[:3]}")
    code = dev_a.subscribe(topic(a["id"], "ack"))
    check(code is not None and not code.is_failure, f"a may subscribe to its own ack (got {code})")
    check(dev_a.publish(topic(a["id"], "events"), bytes.fromhex(a["own_message"])),
          "a's publish on its own topic is acknowledged")
    check(dev_a.wait_for(topic(a["id"], "ack")), "the hub acknowledges a's message on a's ack topic")
    check(not dev_a.disconnected.is_set(), "a is still connected after all refused subscriptions")
    # Publishing as another device: a well-formed message of b's on b's topic.
    acked = dev_a.publish(topic(b["id"], "telemetry"), bytes.fromhex(a["others_message"]))
    check(not acked, "a's publish on b's topic is not acknowledged")
    check(dev_a.disconnected.wait(WAIT), "the broker closes a's connection for publishing on b's topic")
    dev_a.close()

    # The API: no token, a device reading another device's desired state, then its own.
    check(api(cfg, "GET", "/api/v1/devices") == 401, "the API refuses a call without a token (401)")
    status = api(cfg, "GET", f"/api/v1/devices/{b['id']}/desired", basic(a))
    check(status == 403, f"the API refuses a's credentials for b's desired state (got {status})")
    status = api(cfg, "GET", f"/api/v1/devices/{a['id']}/desired", basic(a))
    check(status == 200, f"the API gives a its own desired state (got {status})")

    # Revoked while connected: dropped at once, refused after.
    dev_c = connect(c["id"], c["id"], c["secret"])
    check(dev_c.accepted(), f"c connects before it is revoked (got {dev_c.rc})")
    status = api(cfg, "POST", f"/api/v1/devices/{c['id']}/revoke", "Bearer " + cfg["admin_token"])
    check(status == 204, f"an admin revokes c through the API (got {status})")
    revoked_at = time.time()
    dropped = dev_c.disconnected.wait(WAIT)
    check(dropped, f"c's live connection is closed when it is revoked ({time.time() - revoked_at:.2f} s)")
    dev_c.close()
    d = connect(c["id"], c["id"], c["secret"])
    check(d.rc is not None and d.rc.is_failure, f"revoked c is refused when it reconnects (got {d.rc})")
    d.close()

    if failures:
        print(f"{len(failures)} check(s) failed", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
