"""The OPE report: ``report.json`` (every number) and ``report.html`` (tables + plots).

The HTML page is self-contained (plots are base64 PNGs from matplotlib's object API, no
pyplot state). Sections: decision, estimates with intervals, diagnostics, plots (estimates per
policy, paired differences against the logging policy, action distributions against the
logged ones, FQE fit curves), ground-truth validation when present, how to read it, config.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mtf.configtools import to_dict
from mtf.ope.config import ENSEMBLE, REPORTED_ESTIMATORS, EnsembleConfig, OpeConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mtf.ope.evaluate import OpeResult

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
ESTIMATOR_LABELS = {
    "conservative_fqe": "Conservative FQE (decision)",
    "fqe": "FQE (direct method)",
    "pdis": "PDIS",
    "wpdis": "Weighted PDIS",
    "dr": "Doubly robust",
    ENSEMBLE: "FQE ensemble (bootstrapped)",
}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")
_LOW_ESS = 30.0   # below this the IS-family cells are marked unreliable (as results._MIN_ESS)
_COLORS = {"conservative_fqe": "#c0392b", "fqe": "#2980b9", "pdis": "#8e44ad",
           "wpdis": "#16a085", "dr": "#d35400", ENSEMBLE: "#2c3e50"}


@dataclass(frozen=True)
class ReportPaths:
    directory: str
    json: str
    html: str


def _clean(v: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy -> Python, tuples -> lists."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return _clean(v.tolist())
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


_KIND_WORDS = {"mlp": "MLP FQE", "linear": "linear FQE",
               "mwl": "linear fixed point (LSTDQ = linear MWL)",
               "model_based": "model-based rollout"}


def members_in_words(kinds: Sequence[str]) -> str:
    """What one ensemble member is, e.g. ``"linear FQE"`` or ``"mean of MLP FQE and
    model-based rollout"``."""
    words = [_KIND_WORDS[k] for k in kinds]
    return words[0] if len(words) == 1 else \
        "mean of " + ", ".join(words[:-1]) + " and " + words[-1]


def decision_rule(ope: OpeConfig) -> str:
    """The go / no-go rule in words, for the gate ``ope.gate`` selects."""
    if ope.gate == ENSEMBLE:
        e = ope.ensemble
        rule = (f"go iff the {e.lower_quantile:.0%} quantile (normal, across {e.members} "
                f"bootstrapped members, each a {members_in_words(e.components)}) of "
                f"V(policy) - V(logging) > -{ope.go_margin} * |V(logging)|")
        if e.max_spread > 0:
            rule += f", the members' sd of that difference <= {e.max_spread:.0%} of it"
        if e.min_support > 0:
            rule += (f", and at least {e.min_support:.0%} of the policy's actions have a logged "
                     f"action nearby (support guard)")
        return rule
    return (f"go iff the lower end of the {ope.ci_level:.0%} paired bootstrap interval of "
            f"V_cons(policy) - V_cons(logging) > -{ope.go_margin} * |V_cons(logging)|"
            + (f" and FQE(policy) - V_cons(policy) <= {ope.max_penalty} * |V_cons(logging)| "
               f"(support guard)" if ope.max_penalty > 0 else ""))


_LOW_SUPPORT = 0.3   # below this support share a decision is low-trust (guard off or not)
_FAR = 3.0   # actions this many times farther from the logged ones than logging's own: far
# A policy whose occupancy effective sample is under this share of the logging policy's own is
# low-trust: on the tuning worlds, FQE ensemble errors were 9.1% of the logging value (median)
# below it and 1.9% (max 4.6%) above; held out 9.9% and 2.1% (max 7.8%) (docs/ope.md 9)
THIN_OCCUPANCY = 0.2


def trust(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per decision, how far to trust it, in plain words: ``{policy: {"level", "notes"}}``.

    Looks at the effective sample of the importance-sampling check, whether the estimators
    agree with the decision, how far the policy's actions are from the logged ones (relative
    to the logging policy's own distance, which is the exploration noise) and whether the fits
    converged. ``low``: some evidence contradicts or undermines the decision; ``medium``: no
    contradiction but no independent check either; ``high``: independent checks agree.
    """
    rows = {r["policy"]: r for r in report["results"]}
    ref_name = next((r["policy"] for r in report["results"]
                     if not r["diff_vs_logging"]), None)
    ref_dist = rows[ref_name]["diagnostics"].get("action_distance") if ref_name else None
    ref_occupancy = rows[ref_name]["diagnostics"].get("occupancy_ess") if ref_name else None
    if ref_occupancy is not None and not math.isfinite(ref_occupancy):
        ref_occupancy = None
    ens_cfg = report.get("config", {}).get("ope", {}).get("ensemble", {})
    cap = ens_cfg.get("max_spread", EnsembleConfig().max_spread)
    min_support = ens_cfg.get("min_support", EnsembleConfig().min_support)
    out: dict[str, dict[str, Any]] = {}
    for d in report["decisions"]:
        r = rows[d["policy"]]
        diag = r["diagnostics"]
        notes, low, checked = [], False, False
        ess, n_is = diag.get("ess_trajectory"), diag.get("n_sessions_is")
        if n_is and ess is not None:
            if ess < _LOW_ESS:
                notes.append(f"importance sampling cannot check it: the logs hold the "
                             f"equivalent of only {ess:.0f} of {int(n_is)} sessions close to "
                             f"its actions")
            else:
                checked = True
                notes.append(f"importance sampling can check it (effective sample {ess:.0f} "
                             f"sessions)")
        others = []
        for est in ("conservative_fqe", "dr", ENSEMBLE):
            if est == d["estimator"]:
                continue
            if est == ENSEMBLE:
                low_b = diag.get("ensemble_diff_lower")
            else:
                e = r["diff_vs_logging"].get(est)
                low_b = e["ci_low"] if e and e.get("available") else None
            if low_b is None:
                continue
            agree = (low_b > -d["margin"]) == d["go"]
            others.append((ESTIMATOR_LABELS[est], agree))
        against = [n for n, a in others if not a]
        if against:
            low = True
            notes.append(f"{' and '.join(against)} would decide the other way")
        elif others:
            checked = True
            notes.append(f"{' and '.join(n for n, _ in others)} agree")
        dist = diag.get("action_distance")
        if dist is not None and ref_dist:
            ratio = dist / ref_dist
            if ratio > _FAR:
                low = True
                notes.append(f"its fusion weights are {ratio:.1f}x as far from the logged ones "
                             f"as the logging policy's own exploration: the estimate "
                             f"extrapolates")
            else:
                notes.append(f"its fusion weights stay close to the logged ones ({ratio:.1f}x "
                             f"the exploration noise)")
        support = diag.get("ensemble_support")
        if support is not None and math.isfinite(support):
            if support < (min_support or _LOW_SUPPORT):
                low = True
                notes.append(f"only {support:.0%} of its actions have a logged action nearby: "
                             f"the logs barely reach it")
            else:
                notes.append(f"{support:.0%} of its actions have a logged action nearby")
        occ, ref_occ = diag.get("occupancy_ess"), ref_occupancy
        if occ is not None and math.isfinite(occ) and ref_occ:
            rests = (f"its discounted sessions rest on the equivalent of {occ:.0%} of the "
                     f"logged rows (MWL weights; the logging policy's own: {ref_occ:.0%})")
            if occ < THIN_OCCUPANCY * ref_occ:
                low = True
                notes.append(f"{rests}: under {THIN_OCCUPANCY:.0%} of the logging policy's, "
                             f"where the benchmark's estimates erred by about 10% of the "
                             f"logging value (median), against 2% above it")
            else:
                notes.append(rests)
        spread = diag.get("ensemble_spread")
        if spread is not None and cap and spread > cap:
            low = True
            notes.append(f"the ensemble's members disagree about its gain by {spread:.0%} of "
                         f"the logging value (sd): the data do not pin it down")
        if diag.get("ensemble_converged") == 0.0:
            low = True
            notes.append("the ensemble's value had not settled when the fit stopped")
        made, needed = diag.get("fqe_backups"), diag.get("backups_needed")
        if made is not None and needed is not None and made < needed:
            low = True
            notes.append(f"FQE made {int(made)} backups where the sessions need {int(needed)}")
        level = "low" if low else ("high" if checked else "medium")
        out[d["policy"]] = {"level": level, "notes": notes}
    return out


def _present(results: Any) -> list[str]:
    """The estimators every policy has (the ensemble only when it was fitted)."""
    return [x for x in REPORTED_ESTIMATORS if all(x in r.estimates for r in results)]


def _selected(result: "OpeResult") -> str | None:
    """The policy ``mtf deploy`` would deploy: the GO policy with the highest pessimistic value
    (model selection, :func:`mtf.ope.rules.select_policy`); None when nothing got GO."""
    from mtf.ope.rules import select_policy
    return select_policy(result.results, result.decisions)


def report_dict(result: "OpeResult", ope: OpeConfig, run_id: str) -> dict[str, Any]:
    """Everything in the report, JSON-able."""

    fqe = {name: {kind: {"alpha": fit.settings.alpha, "seconds": fit.seconds,
                         "curve": fit.curve}
                  for kind, fit in (("conservative", f.conservative), ("plain", f.plain))}
           for name, f in result.fits.items()}
    out = _clean({
        "run_id": run_id,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "table": {k: result.meta.get(k) for k in ("table_path", "table_version", "split",
                                                   "n_rows", "n_sessions", "fit_rows")},
        "gamma": result.meta.get("gamma"),
        "decision_rule": decision_rule(ope),
        "policies": [p.describe() for p in result.policies],
        "decisions": [d.to_dict() for d in result.decisions],
        "selected": _selected(result),
        "results": [r.to_dict() for r in result.results],
        "fqe": fqe,
        "ensemble": None if result.ensemble is None else {
            "policies": result.ensemble.policies, "backups": result.ensemble.backups,
            "steps": result.ensemble.steps, "seconds": result.ensemble.seconds,
            "member_values": result.ensemble.values,
            "history": result.ensemble.history,       # mean V per backup (backups, P)
            "converged": result.ensemble.converged()},
        "truth": result.truth,
        "validation": result.validation,
        "meta": result.meta,
        "config": {"ope": to_dict(ope)},
    })
    out["trust"] = trust(out)
    return out


# ---- plots ------------------------------------------------------------------------------------

def _png(fig: "Figure") -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plot_estimates(result: "OpeResult") -> "Figure":
    """Every estimator with its interval, per policy (+ ground truth when known)."""
    from matplotlib.figure import Figure

    names = [r.policy for r in result.results]
    fig = Figure(figsize=(max(6.0, 1.4 * len(names) + 2), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    shown = _present(result.results)
    width = 0.8 / len(shown)
    core: list[float] = []
    for j, est in enumerate(shown):
        xs, ys, lo, hi = [], [], [], []
        for i, r in enumerate(result.results):
            e = r.estimates.get(est)
            if e is not None and e.available:
                xs.append(i - 0.4 + (j + 0.5) * width)
                ys.append(e.value)
                lo.append(max(e.value - e.ci_low, 0.0))
                hi.append(max(e.ci_high - e.value, 0.0))
                if est in ("conservative_fqe", "fqe", "dr", ENSEMBLE):
                    core += [e.value, e.ci_low, e.ci_high]
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", ms=4, capsize=3,
                        color=_COLORS[est], label=ESTIMATOR_LABELS[est])
    if result.truth:
        tx = [i for i, n in enumerate(names) if n in result.truth]
        ty = [result.truth[names[i]]["mean"] for i in tx]
        ax.scatter(tx, ty, marker="*", s=140, color="black", zorder=5, label="ground truth")
        core += ty
    core = [c for c in core if math.isfinite(c)]
    if core:   # robust range: IS intervals can be huge; they are clipped, not hidden
        span = max(core) - min(core) or 1.0
        ax.set_ylim(min(core) - 0.25 * span, max(core) + 0.25 * span)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20)
    ax.set_ylabel("estimated value (discounted session return)")
    ax.set_title("Estimates per policy (bars: bootstrap intervals; y-range clipped)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def plot_differences(result: "OpeResult") -> "Figure":
    """Paired differences to the logging policy with the decision threshold."""
    from matplotlib.figure import Figure

    rows = [r for r in result.results if r.diff_vs_logging]
    fig = Figure(figsize=(7.5, 0.9 + 0.6 * max(len(rows), 1)))
    ax = fig.add_subplot(1, 1, 1)
    margin = result.decisions[0].margin if result.decisions else 0.0
    for i, r in enumerate(rows):
        for j, est in enumerate(("conservative_fqe", "dr", ENSEMBLE)):
            e = r.diff_vs_logging.get(est)
            if e is None or not e.available:
                continue
            y = i + 0.2 * (1 - j)
            ax.errorbar([e.value], [y], xerr=[[max(e.value - e.ci_low, 0.0)],
                                               [max(e.ci_high - e.value, 0.0)]],
                        fmt="o", capsize=3, color=_COLORS[est],
                        label=ESTIMATOR_LABELS[est] if i == 0 else None)
    ax.axvline(0.0, color="gray", lw=1)
    ax.axvline(-margin, color="red", ls="--", lw=1, label=f"-margin ({-margin:.3g})")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r.policy for r in rows])
    ax.set_xlabel("V(policy) - V(logging), paired bootstrap interval")
    ax.set_title("Go / no-go: the conservative lower bound must lie right of the red line")
    ax.grid(axis="x", alpha=0.3)
    if rows:
        ax.legend(fontsize=8, loc="best")
    return fig


def plot_actions(result: "OpeResult", tasks: list[str]) -> "Figure":
    """Per task: logged actions vs each policy's actions on sampled split states."""
    from matplotlib.figure import Figure

    k = result.logged_action_sample.shape[1]
    cols = min(3, k)
    rows = math.ceil(k / cols)
    fig = Figure(figsize=(4.2 * cols, 2.8 * rows))
    bins = np.linspace(-1.0, 1.0, 41)
    cmap = _PALETTE
    for j in range(k):
        ax = fig.add_subplot(rows, cols, j + 1)
        ax.hist(result.logged_action_sample[:, j], bins=bins, density=True, color="#cccccc",
                label="logged")
        for i, (name, fit) in enumerate(result.fits.items()):
            a = fit.action_sample[:, j]
            color = cmap[i % len(cmap)]
            if a.size and float(a.std()) < 1e-6:
                ax.axvline(float(a[0]), color=color, lw=1.5, label=name)
            else:
                ax.hist(a, bins=bins, density=True, histtype="step", lw=1.5, color=color,
                        label=name)
        ax.set_title(tasks[j] if j < len(tasks) else f"task {j}", fontsize=9)
        ax.set_xlim(-1.05, 1.05)
        if j == 0:
            ax.legend(fontsize=7)
    fig.suptitle("Normalised actions: logged (grey) vs each policy on the split's states")
    fig.subplots_adjust(hspace=0.45)
    return fig


def plot_fits(result: "OpeResult") -> "Figure":
    """FQE fit curves: TD error, V(s0) and the CQL regulariser R per step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.6))
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    cmap = _PALETTE
    for i, (name, f) in enumerate(result.fits.items()):
        color = cmap[i % len(cmap)]
        for fit, ls in ((f.conservative, "-"), (f.plain, "--")):
            if not fit.curve:
                continue
            steps = [c["step"] for c in fit.curve]
            label = f"{name} ({'cons.' if fit.conservative else 'plain'})"
            axes[0].plot(steps, [max(c["td"], 1e-12) for c in fit.curve], ls, color=color,
                         label=label)
            axes[1].plot(steps, [c["v0"] for c in fit.curve], ls, color=color)
            axes[2].plot(steps, [c["reg"] for c in fit.curve], ls, color=color)
    axes[0].set_yscale("log")
    axes[0].set_title("TD error T (minibatch mean)")
    axes[1].set_title("V(s0) = mean Q(s0, pi(s0))")
    axes[2].set_title("R = mean[Q(s, pi(s)) - Q(s, a)]")
    for ax in axes:
        ax.set_xlabel("gradient step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("FQE fits (solid: conservative, dashed: plain)", y=1.04)
    return fig


def plot_validation(result: "OpeResult") -> "Figure | None":
    """Estimate vs ground truth per estimator."""
    if not result.truth:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot(1, 1, 1)
    span: list[float] = []   # truth and model-based estimates set the range; IS may fall out
    for est in _present(result.results):
        xs, ys = [], []
        for r in result.results:
            e = r.estimates.get(est)
            if r.policy in result.truth and e is not None and e.available:
                xs.append(result.truth[r.policy]["mean"])
                ys.append(e.value)
        if xs:
            ax.scatter(xs, ys, color=_COLORS[est], label=ESTIMATOR_LABELS[est])
            span += xs + (ys if est in ("conservative_fqe", "fqe", "dr", ENSEMBLE) else [])
    span = [v for v in span if math.isfinite(v)]
    if span:
        lo, hi = min(span), max(span)
        pad = 0.1 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="gray", lw=1)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("true value (simulator)")
    ax.set_ylabel("estimate")
    ax.set_title("Estimates vs ground truth (diagonal = exact)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# ---- HTML -------------------------------------------------------------------------------------

def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, (int, np.integer)) or (isinstance(v, float) and float(v).is_integer()
                                            and abs(v) >= 100):
        return f"{int(v):,}"
    return f"{float(v):.{digits}g}"


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;max-width:1250px;
color:#222}
h1{font-size:22px}
h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right} th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.go{color:#fff;background:#27ae60;font-weight:bold;text-align:center}
.nogo{color:#fff;background:#c0392b;font-weight:bold;text-align:center}
.warn{color:#a04000;font-size:12px;text-align:left}
.note{color:#555;font-size:13px} img{max-width:100%;margin:6px 0}
code{background:#f4f4f4;padding:1px 4px}
"""


def render_html(report: dict[str, Any], figures: dict[str, str]) -> str:
    """The report page from :func:`report_dict` output and base64 PNG figures."""
    e = html.escape
    t = report["table"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>OPE report "
             f"{e(report['run_id'])}</title><style>{_CSS}</style></head><body>",
             f"<h1>Off-policy evaluation report <code>{e(report['run_id'])}</code></h1>",
             f"<p class='note'>Table <code>{e(str(t['table_path']))}</code> version "
             f"<b>{e(str(t['table_version']))}</b>, split <b>{e(str(t['split']))}</b>: "
             f"{_f(t['n_rows'])} rows, {_f(t['n_sessions'])} sessions (FQE fitted on "
             f"{_f(t['fit_rows'])} rows). Discount gamma = {_f(report['gamma'])}. Created "
             f"{e(report['created_utc'])}.</p>"]

    parts.append("<h2>Decision</h2>")
    if report["decisions"]:
        go = [d["policy"] for d in report["decisions"] if d["go"]]
        no = [d["policy"] for d in report["decisions"] if not d["go"]]
        parts.append(f"<p><b>May go online:</b> {e(', '.join(go) or 'none')}. "
                     f"<b>Not:</b> {e(', '.join(no) or 'none')}.</p>")
    parts.append(f"<p class='note'>Rule: {e(report['decision_rule'])}.</p>")
    if report["decisions"]:
        rows = []
        for d in report["decisions"]:
            cls = "go" if d["go"] else "nogo"
            warn = "<br>".join(e(w) for w in d["warnings"]) or ""
            rows.append([e(d["policy"]), f"<span class='{cls}'>&nbsp;{'GO' if d['go'] else 'NO-GO'}"
                         f"&nbsp;</span>", _f(d["diff"]), _f(d["diff_low"]), _f(-d["margin"]),
                         f"<span class='warn'>{warn}</span>"])
        parts.append(_table(["policy", "decision", "V(pi) - V(logging)",
                             "lower bound", "threshold (-margin)", "warnings"], rows))
        parts.append("<h3>How much to trust each decision</h3><ul>")
        for name, t_ in report.get("trust", {}).items():
            parts.append(f"<li><b>{e(name)}</b>: trust <b>{e(t_['level'])}</b>. "
                         f"{e('; '.join(t_['notes']))}.</li>")
        parts.append("</ul>")
    else:
        parts.append("<p>No decision: the logging policy was not evaluated.</p>")

    parts.append("<h2>Estimates</h2><p class='note'>Point estimate on all data, then the "
                 "bootstrap percentile interval (FQE ensemble: mean -+ z sd across its "
                 "bootstrapped fits). Conservative FQE is the paper's estimator; the decision "
                 f"uses {e(ESTIMATOR_LABELS[report['config']['ope']['gate']])}.</p>")
    shown = [x for x in REPORTED_ESTIMATORS
             if all(x in r["estimates"] for r in report["results"])]
    header = ["policy"] + [ESTIMATOR_LABELS[x] for x in shown]
    rows = []
    for r in report["results"]:
        cells = [e(r["policy"])]
        ess = r["diagnostics"].get("ess_trajectory") or 0.0
        for est in shown:
            v = r["estimates"][est]
            cell = (f"{_f(v['value'])} [{_f(v['ci_low'])}, {_f(v['ci_high'])}]"
                    if v["available"] else f"<span class='warn'>{e(v['note'])}</span>")
            if v["available"] and est in ("pdis", "wpdis", "dr") and ess < _LOW_ESS:
                cell += f" <span class='warn'>unreliable: ESS {ess:.0f}</span>"
            cells.append(cell)
        rows.append(cells)
    if report.get("truth"):
        header.append("ground truth")
        for cells, r in zip(rows, report["results"]):
            tr = report["truth"].get(r["policy"])
            cells.append(f"{_f(tr['mean'])} [{_f(tr['ci_low'])}, {_f(tr['ci_high'])}]"
                         if tr else "n/a")
    parts.append(_table(header, rows))

    parts.append("<h2>Diagnostics</h2>")
    rows = []
    for r in report["results"]:
        d = r["diagnostics"]
        clipped = d["clipped_share"]
        rows.append([e(r["policy"]), _f(d["n_initial_states"]), _f(d["n_sessions_is"]),
                     _f(d["n_sessions_excluded_is"]), _f(d["ess_trajectory"], 3),
                     _f(d["ess_first_step"], 3),
                     f"{_f(100 * clipped if clipped is not None else None, 3)}%",
                     _f(d["conservative_penalty"]), _f(d["n_truncated_sessions"]),
                     _f(d["logged_return"]), _f(d["exploit_logged_return"]),
                     _f(d.get("occupancy_ess"), 3)])
    parts.append(_table(["policy", "initial states (FQE)", "sessions (IS)",
                         "excluded: no action_logp", "ESS (trajectory)", "ESS (first step)",
                         "weights clipped", "FQE - conservative", "truncated sessions",
                         "logged return", "logged return, exploit group",
                         "occupancy ESS (share of rows)"], rows))
    parts.append("<p class='note'>ESS = (sum w)^2 / sum w^2 of the importance weights "
                 "(trajectory: the weight of the whole session). A small ESS means the "
                 "policy's actions are rarely close to logged ones: IS, WPDIS and DR are then "
                 "unreliable. 'Logged return, exploit group' is the model-free on-policy value "
                 "of the logging baseline on this split. 'Occupancy ESS' is the same ratio for "
                 "the policy's discounted state-action occupancy (MWL weights, as a share of "
                 "the rows; only with the FQE ensemble): it does not collapse with the number "
                 "of action dimensions, and under a fifth of the logging policy's own the "
                 "estimates are rough.</p>")

    for key, title in (("estimates", "Estimates per policy"),
                       ("differences", "Paired differences to the logging policy"),
                       ("actions", "Action distributions"),
                       ("fits", "FQE fitting"), ("validation", "Validation against ground truth")):
        if key in figures:
            parts.append(f"<h2>{title}</h2><img src='data:image/png;base64,{figures[key]}'>")

    val = report.get("validation")
    if val:
        parts.append("<h2>Ground truth comparison</h2>")
        rows = []
        for est in REPORTED_ESTIMATORS:
            v = val["estimators"].get(est)
            if not v:
                continue
            rows.append([ESTIMATOR_LABELS[est], _f(v["mean_abs_error"]), _f(v["rmse"]),
                         _f(v.get("diff_mean_abs_error")), _f(v["spearman"], 3),
                         _f(v["coverage"], 3), "yes" if v["same_order"] else "no"])
        parts.append(_table(["estimator", "mean |error|", "RMSE",
                             "mean |error| of V(pi) - V(logging)", "Spearman rank corr.",
                             "interval covers truth (share)", "same order as truth"], rows))
        if val.get("decisions"):
            parts.append("<p>Decisions against the true difference to the logging policy:</p>")
            parts.append(_table(["policy", "decision", "true V(pi) - V(logging)",
                                 "right call"],
                                [[e(d["policy"]), "GO" if d["go"] else "NO-GO",
                                  _f(d["true_diff"]), "yes" if d["agree"] else "<b>no</b>"]
                                 for d in val["decisions"]]))
        if val.get("alpha_sweep"):
            names = list(val["alpha_sweep"][0]["values"])
            parts.append("<p>Conservative FQE for other regulariser weights alpha (plain FQE "
                         "fits shared):</p>")
            parts.append(_table(
                ["alpha", *[e(n) for n in names], "Spearman", "same order", "wrong calls"],
                [[_f(s["alpha"]), *[_f(s["values"][n]) for n in names], _f(s["spearman"], 3),
                  "yes" if s["same_order"] else "no",
                  str(sum(1 for d in s["decisions"] if not d["agree"]))]
                 for s in val["alpha_sweep"]]))
        if val.get("discordant_pairs"):
            parts.append("<p>Pairs the conservative estimator orders differently from the "
                         "truth:</p><ul>" + "".join(
                             f"<li>{e(p['a'])} vs {e(p['b'])}: true difference "
                             f"{_f(p['true_diff'])} ({'within' if p['truth_tied'] else 'outside'} "
                             f"the truth's own uncertainty), conservative difference "
                             f"{_f(p['estimated_diff'])}; FQE - conservative penalty "
                             f"{_f(p['penalty_a'])} / {_f(p['penalty_b'])}</li>"
                             for p in val["discordant_pairs"]) + "</ul>")
        parts.append(f"<p class='note'>{e(val.get('note', ''))}</p>")

    parts.append("""<h2>How to read this report</h2><ul class='note'>
<li><b>Conservative FQE</b> fits Q on the split with a penalty that lowers Q on the evaluated
policy's actions and raises it on logged actions; a policy that leaves the data's support is
<i>under</i>-estimated. It is a screen against harmful policies, not an unbiased value.</li>
<li><b>FQE</b> is the same fit without the penalty (the direct method). The gap FQE minus
conservative FQE grows as the policy moves away from the logged actions.</li>
<li><b>PDIS / WPDIS / DR</b> reweight logged sessions by how likely the policy (smoothed by a
Gaussian of scale target_sigma) was to take the logged actions. They only use sessions whose
actions carry a logged density (exploration groups). Trust them only with a reasonable ESS.</li>
<li>Intervals are Poisson-bootstrap percentile intervals over sessions. For the FQE estimators
they hold Q fixed (fit uncertainty is not included), so they are too narrow.</li>
<li>Differences to the logging policy are paired (same bootstrap replicates), hence much
tighter than the separate intervals.</li></ul>""")
    parts.append("<h2>Configuration</h2><details><summary>ope section and run metadata"
                 "</summary><pre>" + e(json.dumps({"config": report["config"],
                                                   "meta": report["meta"],
                                                   "policies": report["policies"]},
                                                  indent=2, sort_keys=True)) +
                 "</pre></details></body></html>")
    return "\n".join(parts)


def write_report(result: "OpeResult", ope: OpeConfig, out_dir: str, *,
                 run_id: str) -> ReportPaths:
    """Write report.json and report.html into ``out_dir`` (created); atomic renames."""
    report = report_dict(result, ope, run_id)
    tasks = list(result.meta.get("action_tasks") or
                 [f"task {j}" for j in range(result.logged_action_sample.shape[1])])
    figures = {"estimates": _png(plot_estimates(result)),
               "differences": _png(plot_differences(result)),
               "actions": _png(plot_actions(result, tasks)),
               "fits": _png(plot_fits(result))}
    val = plot_validation(result)
    if val is not None:
        figures["validation"] = _png(val)
    os.makedirs(out_dir, exist_ok=True)
    paths = ReportPaths(out_dir, os.path.join(out_dir, REPORT_JSON),
                        os.path.join(out_dir, REPORT_HTML))
    for path, text in ((paths.json, json.dumps(report, indent=2, sort_keys=True,
                                               allow_nan=False)),
                       (paths.html, render_html(report, figures))):
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    return paths
