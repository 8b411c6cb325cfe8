#!/usr/bin/env python3
"""A third-party device for benchmarks: publishes the rows of a SKAB-layout CSV file as agent
readings ({"ts_ms": ..., "values": {name: value}}) over MQTT at a fixed rate, cycling through
the file: one message per reading, or BATCH readings per message as a JSON array (a gateway
that batches).

    pip install paho-mqtt
    scripts/publish-readings.py CSV HOST PORT TOPIC RATE_HZ [BATCH]
"""
import csv
import json
import sys
import time

import paho.mqtt.client as mqtt


def main():
    path, host, port, topic, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    batch = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    names, rows = rows[0][1:], rows[1:]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-publisher-{time.time_ns()}")
    client.connect(host, port)
    client.loop_start()
    period = 1.0 / rate
    next_t = time.monotonic()
    i = 0
    while True:
        now_ms = time.time() * 1000
        readings = []
        for k in range(batch):
            row = rows[(i + k) % len(rows)]
            values = {n: float(v) for n, v in zip(names, row[1:1 + len(names)])}
            # Oldest first: the last reading of a batch is the newest.
            readings.append({"ts_ms": int(now_ms - (batch - 1 - k) * period * 1000), "values": values})
        payload = readings[0] if batch == 1 else readings
        client.publish(topic, json.dumps(payload), qos=0)
        i += batch
        next_t += period * batch
        time.sleep(max(0.0, next_t - time.monotonic()))


if __name__ == "__main__":
    main()
