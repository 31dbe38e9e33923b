"""Seeded random impression logs for parity and property tests (small, but with every edge:
first requests, long histories, session gaps, app session ids, midnight, pages of 1..6)."""
from __future__ import annotations

import datetime as dt

import numpy as np

from tests.etl.logs import DAY1, UTC, imp


def random_logs(seed: int, n_users: int = 4, max_requests: int = 40, long_user_imps: int = 0,
                days: int = 2, user_prefix: str = "u") -> list[dict]:
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    start = dt.datetime.combine(DAY1, dt.time(), tzinfo=UTC)
    end = start + dt.timedelta(days=days)
    for u in range(n_users):
        user = f"{user_prefix}{u}"
        n_req = int(rng.integers(1, max_requests + 1))
        target = long_user_imps if (u == 0 and long_user_imps) else 0
        t = start + dt.timedelta(seconds=int(rng.integers(0, 20 * 3600)))
        r = 0
        n_imps = 0
        app_sid = None
        while (r < n_req or n_imps < target) and t < end:
            size = int(rng.integers(1, 7))
            kind = rng.random()
            if kind < 0.1:
                app_sid = f"s{u}-{r}"          # a new app session id
            elif kind < 0.15:
                app_sid = None
            dur = float(rng.choice([0.0, rng.uniform(1, 120)], p=[0.05, 0.95]))
            for p in range(size):
                play = float(rng.uniform(0, 2.5) * max(dur, 1.0)) if rng.random() < 0.9 else 0.0
                rows.append(imp(user, f"r{r}", t, p, event_id=f"{user}-{r}-{p}",
                                play_time_s=play, duration_s=dur,
                                liked=int(rng.random() < .2), shared=int(rng.random() < .1),
                                commented=int(rng.random() < .1),
                                followed=int(rng.random() < .05),
                                fusion_weights=[float(x) for x in rng.uniform(0, 2, 6)],
                                explore_group=str(rng.choice(["exploit", "noise", "random"])),
                                action_logp=float(rng.normal()), app_session_id=app_sid))
            n_imps += size
            r += 1
            gap = rng.choice([rng.uniform(1, 600), rng.uniform(1700, 1900),
                              rng.uniform(3600, 10 * 3600)], p=[0.7, 0.15, 0.15])
            if target:  # the long-history user: short gaps, some just over the session gap
                gap = rng.choice([rng.uniform(1, 60), rng.uniform(1801, 1900)], p=[0.97, 0.03])
            t = t + dt.timedelta(seconds=float(gap), microseconds=int(rng.integers(1, 1000)))
    return rows
