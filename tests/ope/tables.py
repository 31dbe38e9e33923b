"""Tiny transition data for the OPE tests: known-value problems and Delta tables of them."""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mtf.ope.data import TransitionArrays
from mtf.sim.logging_policy import truncated_normal_logpdf, truncated_normal_sample

TASKS = ("click", "like")


def arrays_to_frame(data: TransitionArrays, split: str = "test") -> pd.DataFrame:
    """TransitionArrays -> a pandas frame in the transition-table contract."""
    n = len(data)
    sess = pd.Series(data.session_id)
    ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(
        sess.factorize()[0] * 3600 + data.step * 30, unit="s")
    return pd.DataFrame({
        "session_id": data.session_id.astype(str),
        "user_id": [f"u{i % 17}" for i in range(n)],
        "step": data.step.astype("int32"),
        "ts": ts,
        "state": [list(map(float, r)) for r in data.state],
        "next_state": [list(map(float, r)) for r in data.next_state],
        "action": [list(map(float, r)) for r in data.action],
        "action_logp": data.action_logp,
        "reward": data.reward,
        "reward_stickiness": data.reward,
        "reward_activeness": np.zeros(n),
        "is_terminal": data.is_terminal,
        "is_truncated": data.is_truncated,
        "explore_group": np.where(data.is_exploit, "exploit",
                                  np.where(np.isnan(data.action_logp), None, "noise")),
        "split": split,
    })


def write_delta_table(spark: Any, path: str, frame: pd.DataFrame, feature_names: Sequence[str],
                      tasks: Sequence[str] = TASKS, n_files: int = 3,
                      properties: Mapping[str, str] | None = None, append: bool = False) -> int:
    """Write a transition frame as a Delta table (with the layout properties) and return its
    version; ``append`` adds the rows in one commit and leaves the properties alone."""
    from pyspark.sql import functions as F
    from mtf.delta import write_delta
    from tests.rl.tables import transitions_schema

    schema = transitions_schema()   # the contract of docs/contract.md section 2
    pdf = frame.copy()
    pdf["action_logp"] = pdf["action_logp"].astype(object).where(pdf["action_logp"].notna(), None)
    df = (spark.createDataFrame(pdf[[f.name for f in schema]], schema=schema)
          .withColumn("ds", F.to_date("ts")).repartition(n_files))
    if append:
        return write_delta(df, path, mode="append", partition_by=["ds"])
    props = {"mtf.feature_names": json.dumps(list(feature_names)),
             "mtf.feature_version": "ope-test",
             "mtf.action_tasks": json.dumps(list(tasks)), **(properties or {})}
    return write_delta(df, path, mode="overwrite", partition_by=["ds"], properties=props)


def bandit(n: int, seed: int, *, sigma_b: float = 0.5, exploit_share: float = 0.0,
           noise_sd: float = 0.1) -> TransitionArrays:
    """One-step sessions: s ~ N(0, I_2), a ~ TN(0, sigma_b) on [-1, 1]^2 (logged density),
    r = 1 - (a_0 - 0.3)^2 - 0.5 (a_1 + 0.2)^2 + 0.2 s_0 + N(0, noise_sd^2); terminal.

    True value of the constant policy c: 1 - (c_0 - 0.3)^2 - 0.5 (c_1 + 0.2)^2 (E s_0 = 0);
    of its smoothed version TN(c, sigma_e): see :func:`bandit_smoothed_value`.
    """
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, 2)).astype(np.float32)
    a = truncated_normal_sample(np.zeros((n, 2)), sigma_b, rng)
    logp = truncated_normal_logpdf(a, 0.0, sigma_b).sum(axis=1)
    exploit = rng.random(n) < exploit_share
    a[exploit] = 0.0
    r = bandit_reward(s, a) + noise_sd * rng.normal(size=n)
    return TransitionArrays.build(
        [f"b{seed}-{i}" for i in range(n)], np.zeros(n, dtype=int), s, np.zeros_like(s), a,
        [None if x else v for x, v in zip(exploit, logp)], r, np.ones(n, bool), np.zeros(n, bool),
        np.where(exploit, "exploit", "random"))


def bandit_reward(s: np.ndarray, a: np.ndarray) -> np.ndarray:
    return 1.0 - (a[:, 0] - 0.3) ** 2 - 0.5 * (a[:, 1] + 0.2) ** 2 + 0.2 * s[:, 0]


def bandit_value(c: Sequence[float]) -> float:
    return float(1.0 - (c[0] - 0.3) ** 2 - 0.5 * (c[1] + 0.2) ** 2)


def truncated_normal_moments(mu: float, sigma: float) -> tuple[float, float]:
    """(mean, variance) of N(mu, sigma^2) truncated to [-1, 1], by quadrature."""
    x = np.linspace(-1.0, 1.0, 400_001)
    p = np.exp(truncated_normal_logpdf(x[:, None], mu, sigma)[:, 0])
    m = np.trapz(p * x, x)
    return float(m), float(np.trapz(p * (x - m) ** 2, x))


def bandit_smoothed_value(c: Sequence[float], sigma_e: float) -> float:
    """E r under a ~ TN(c, sigma_e) per task: E (a - b)^2 = var + (mean - b)^2."""
    (m0, v0), (m1, v1) = truncated_normal_moments(c[0], sigma_e), \
        truncated_normal_moments(c[1], sigma_e)
    return float(1.0 - (v0 + (m0 - 0.3) ** 2) - 0.5 * (v1 + (m1 + 0.2) ** 2))


def chain(n: int, seed: int, *, sigma_b: float = 0.5, gamma: float = 0.9) -> TransitionArrays:
    """Two-step sessions with 1-d actions and a 1-d state that carries the first action.

    s_0 = (0, 0); a_0 ~ TN(0, sigma_b); r_0 = a_0; s_1 = (1, a_0); a_1 ~ TN(0, sigma_b);
    r_1 = 1 - (a_1 - s_1[1])^2 ... kept simple: r_1 = 2 - 2 (a_1 - 0.5)^2 - a_0^2; terminal.
    The first action's reward pays now but costs later (a long-term trade-off).
    """
    rng = np.random.default_rng(seed)
    a0 = truncated_normal_sample(np.zeros((n, 1)), sigma_b, rng)
    a1 = truncated_normal_sample(np.zeros((n, 1)), sigma_b, rng)
    lp0 = truncated_normal_logpdf(a0, 0.0, sigma_b)[:, 0]
    lp1 = truncated_normal_logpdf(a1, 0.0, sigma_b)[:, 0]
    r0 = a0[:, 0] + 0.05 * rng.normal(size=n)
    r1 = 2.0 - 2.0 * (a1[:, 0] - 0.5) ** 2 - a0[:, 0] ** 2 + 0.05 * rng.normal(size=n)
    s0 = np.zeros((n, 2), dtype=np.float32)
    s1 = np.stack([np.ones(n), a0[:, 0]], axis=1).astype(np.float32)
    ids = [f"c{seed}-{i}" for i in range(n)]
    return TransitionArrays.build(
        ids + ids, np.r_[np.zeros(n, int), np.ones(n, int)], np.vstack([s0, s1]),
        np.vstack([s1, np.zeros_like(s1)]), np.vstack([a0, a1]), np.r_[lp0, lp1],
        np.r_[r0, r1], np.r_[np.zeros(n, bool), np.ones(n, bool)], np.zeros(2 * n, bool),
        ["random"] * (2 * n))


def chain_value(c0: float, c1: float, gamma: float) -> float:
    """Value of the deterministic policy a_0 = c0, a_1 = c1 in :func:`chain`."""
    return float(c0 + gamma * (2.0 - 2.0 * (c1 - 0.5) ** 2 - c0 ** 2))


def chain_smoothed_value(c0: float, c1: float, gamma: float, sigma_e: float) -> float:
    m0, v0 = truncated_normal_moments(c0, sigma_e)
    m1, v1 = truncated_normal_moments(c1, sigma_e)
    return float(m0 + gamma * (2.0 - 2.0 * (v1 + (m1 - 0.5) ** 2) - (v0 + m0 ** 2)))


def sessions(n_sessions: int, seed: int, *, state_dim: int = 3, k: int = 2,
             sigma_b: float = 0.5, exploit_share: float = 0.3) -> TransitionArrays:
    """Multi-step sessions (1-4 steps) with every contract case: exploit sessions without
    action_logp, truncated last steps (1 in 4), terminal ones with zero next states."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 5, size=n_sessions)
    n = int(lengths.sum())
    sess = np.repeat(np.arange(n_sessions), lengths)
    step = np.concatenate([np.arange(m) for m in lengths])
    last = np.concatenate([np.arange(m) == m - 1 for m in lengths])
    truncated = last & (rng.random(n_sessions) < 0.25)[sess]
    exploit = (rng.random(n_sessions) < exploit_share)[sess]
    state = rng.normal(size=(n + 1, state_dim)).astype(np.float32)
    next_state = state[1:].copy()
    next_state[last & ~truncated] = 0.0
    a = truncated_normal_sample(np.zeros((n, k)), sigma_b, rng)
    logp = truncated_normal_logpdf(a, 0.0, sigma_b).sum(axis=1)
    a[exploit] = 0.0
    r = 1.0 - ((a - 0.2) ** 2).sum(axis=1) + 0.3 * state[:n, 0] + 0.1 * rng.normal(size=n)
    return TransitionArrays.build(
        [f"s{seed}-{i:05d}" for i in sess], step, state[:n], next_state, a,
        [None if x else v for x, v in zip(exploit, logp)], r, last & ~truncated, truncated,
        np.where(exploit, "exploit", "noise"))


def write_export(directory: str, state_dim: int = 3, tasks: Sequence[str] = TASKS,
                 algorithm: str = "bc", exported_utc: str = "2026-01-01T00:00:00Z",
                 seed: int = 0) -> str:
    """A real mtf.rl.export.ExportedPolicy (deterministic actor) with a policy.json sidecar."""
    import os

    import torch

    from mtf.ope.policies import script_bytes
    from mtf.rl.export import ExportedPolicy
    from mtf.rl.networks import DeterministicActor

    torch.manual_seed(seed)
    actor = DeterministicActor(state_dim, len(tasks), (8,))
    module = ExportedPolicy(actor, torch.zeros(state_dim), torch.ones(state_dim),
                            torch.zeros(len(tasks)), torch.full((len(tasks),), 2.0)).eval()
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "policy.pt"), "wb") as fh:
        fh.write(script_bytes(module))
    with open(os.path.join(directory, "policy.json"), "w") as fh:
        json.dump({"algorithm": algorithm, "feature_names": [f"f{i}" for i in range(state_dim)],
                   "action_tasks": list(tasks), "exported_utc": exported_utc,
                   "table_version": 3}, fh)
    return directory


def exit_sessions(n_sessions: int, seed: int, *, sigma_b: float = 0.5,
                  max_steps: int = 60) -> TransitionArrays:
    """Multi-step sessions where the action trades reward now for session length.

    State (u, 0): u ~ N(0, 1) per session, constant (it matters for nothing). Each step logs
    a ~ TN(0, sigma_b) on [-1, 1], earns r = 1 + 0.3 a + N(0, 0.05^2), and the user leaves
    with probability 0.3 + 0.2 a (terminal); a session still running after ``max_steps``
    is truncated. The constant policy c has the value :func:`exit_value`: a high a wins the
    step and loses the session (the clickbait trade-off in one dimension).
    """
    rng = np.random.default_rng(seed)
    ids, steps, states, actions, logps, rewards, terminal, truncated = ([] for _ in range(8))
    for i in range(n_sessions):
        u = rng.normal()
        for t in range(max_steps):
            a = truncated_normal_sample(np.zeros((1, 1)), sigma_b, rng)[0]
            leave = rng.random() < 0.3 + 0.2 * a[0]
            ids.append(f"x{seed}-{i}")
            steps.append(t)
            states.append((u, 0.0))
            actions.append(a)
            logps.append(float(truncated_normal_logpdf(a[None], 0.0, sigma_b)[0, 0]))
            rewards.append(1.0 + 0.3 * a[0] + 0.05 * rng.normal())
            terminal.append(bool(leave))
            truncated.append(not leave and t == max_steps - 1)
            if leave:
                break
    state = np.asarray(states, dtype=np.float32)
    ends = np.asarray(terminal)
    next_state = np.where(ends[:, None], 0.0, state).astype(np.float32)
    return TransitionArrays.build(ids, np.asarray(steps), state, next_state,
                                  np.asarray(actions, dtype=np.float32), logps,
                                  np.asarray(rewards), ends, np.asarray(truncated),
                                  ["random"] * len(ids))


def exit_value(c: float, gamma: float) -> float:
    """Value of the constant policy a = c in :func:`exit_sessions` (an unbounded session):
    sum_t gamma^t (1 - p)^t r = r / (1 - gamma (1 - p)), r = 1 + 0.3 c, p = 0.3 + 0.2 c."""
    return float((1.0 + 0.3 * c) / (1.0 - gamma * (0.7 - 0.2 * c)))
