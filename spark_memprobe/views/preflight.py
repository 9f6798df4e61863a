"""Render a preflight: the engine's verdict in its own terms, what stands in the way ranked in
bytes, and the remedies with the bytes each frees and its risk (docs/preflight.md)."""
from __future__ import annotations

from dataclasses import asdict

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..analysis.engines import EngineState, Prediction
from ..analysis.engines.blockers import Blocker, Remedy
from .fmt import fmt_bytes

TOP = 12          # blockers shown on the screen (JSON has all)


def preflight_to_dict(state: EngineState, pred: Prediction, blockers: list[Blocker], fixes: list[Remedy],
                      notes: list[str]) -> dict:
    p = asdict(pred)
    p.update(shortfall_bytes=pred.shortfall_bytes, fails=pred.fails)
    return {"state": asdict(state), "prediction": p, "blockers": [asdict(b) for b in blockers],
            "remedies": [asdict(r) for r in fixes], "notes": notes}


def _verdict(pred: Prediction) -> Text:
    if pred.admission_ok is None:
        word, style = "no start-up check modelled", "yellow"
    elif pred.fails:
        word, style = "WILL FAIL", "bold red"
    else:
        word, style = "passes", "bold green"
    t = Text(f"{pred.engine}: ", style="bold")
    t.append(word, style=style)
    t.append(f"  (free {fmt_bytes(pred.free_bytes)} by {pred.free_basis}, total {fmt_bytes(pred.total_bytes)}, "
             f"asks {fmt_bytes(pred.requested_bytes)}")
    if pred.shortfall_bytes:
        t.append(f", short by {fmt_bytes(pred.shortfall_bytes, exact=True)}", style="red")
    t.append(")")
    return t


def _kv_line(pred: Prediction) -> Text:
    if pred.kv_bytes is None:
        return Text("KV budget: not known (see notes)")
    t = Text(f"KV budget: {'at most ' if pred.kv_upper_bound else ''}{fmt_bytes(pred.kv_bytes, exact=True)}")
    if pred.approx_bytes:
        t.append(f"  (approximate: ± {fmt_bytes(pred.approx_bytes)})")
    for k, v in pred.detail.items():
        t.append(f"  {k}={fmt_bytes(v) if k.endswith('bytes') else v}")
    return t


def render_preflight(header: dict, state: EngineState, pred: Prediction, blockers: list[Blocker],
                     fixes: list[Remedy], notes: list[str]) -> Group:
    settings = " ".join(f"{k}={v}" for k, v in pred.settings.items() if v is not None)
    parts = [Text(f"memprobe preflight  {header['host']}  target: {header['target']}"),
             Text(f"settings: {settings}"), _verdict(pred)]
    if pred.message:
        parts.append(Text(f"the engine will say: {pred.message}", style="red"))
    parts.append(_kv_line(pred))
    if blockers:
        t = Table(title=f"what stands between this host and the request (lowers {pred.free_basis})",
                  title_justify="left", box=box.SIMPLE, pad_edge=False)
        t.add_column("bytes", justify="right")
        t.add_column("what")
        t.add_column("note")
        for b in blockers[:TOP]:
            t.add_row(fmt_bytes(b.bytes), b.name, b.note)
        if len(blockers) > TOP:
            t.add_row("", f"... {len(blockers) - TOP} more (--json lists all)", "")
        parts.append(t)
    if fixes:
        t = Table(title="remedies", title_justify="left", box=box.SIMPLE, pad_edge=False)
        t.add_column("command")
        t.add_column("frees", justify="right")
        t.add_column("then")
        t.add_column("risk")
        for r in fixes:
            then = "" if r.passes is None else "passes" if r.passes else "still short"
            t.add_row(r.command, fmt_bytes(r.frees_bytes), then, r.risk)
        parts.append(t)
    parts += [Text(f"source: {pred.source}", style="dim")]
    parts += [Text(f"note: {n}", style="dim") for n in state.notes + pred.notes + notes]
    return Group(*parts)
