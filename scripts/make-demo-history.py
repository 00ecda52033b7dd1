#!/usr/bin/env python3
"""Writes fixtures/history/test-host-14d.csv: 14 days of `cpu` for web-1 and
web-2 of the test host, shaped by a real trace (NAB's occupancy_6005, a road
sensor's daily commuter pattern, MIT licence: benches/data/nab-dev/), kept at
its own 5-minute steps, gaps and timestamps (2015). Import it with
`virt-persona history-import --retime fixtures/history/test-host-14d.csv`,
which shifts it so that its newest row ends now.

web-1: 15 + 7 x occupancy (a morning rush above 70 %), web-2: 12 + 5 x
occupancy (a smaller rush), both capped at 100.
"""
import csv, datetime, os

here = os.path.dirname(os.path.abspath(__file__))
src = os.path.join(here, "..", "benches", "data", "nab-dev", "occupancy_6005.csv")
out = os.path.join(here, "..", "fixtures", "history", "test-host-14d.csv")
rows = []
with open(src) as f:
    for r in list(csv.reader(f))[1:]:
        t = datetime.datetime.fromisoformat(r[0]).replace(tzinfo=datetime.timezone.utc)
        rows.append((int(t.timestamp()), float(r[1])))
end = rows[-1][0]
rows = [r for r in rows if r[0] > end - 14 * 86400]
with open(out, "w") as f:
    f.write("timestamp,domain,metric,value\n")
    for dom, base, k in (("web-1", 15, 7), ("web-2", 12, 5)):
        for t, v in rows:
            f.write(f"{t},{dom},cpu,{min(100.0, base + k * v):.2f}\n")
