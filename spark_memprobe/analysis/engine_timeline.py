"""The inference engine's own log in a report: its facts placed on the timeline, and the KV cache
it reported compared with the engine model's at that instant (analysis/engines), with what the
target's page cache took against a cold-cache start and the remedy (docs/report.md).

Reads the recording's "engine_fact" events (recording.py); builds one ledger at the sample at or
before the engine's KV line, as report.py does for its moments.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..engine_facts import EngineFact, EngineLog, fact_from_dict
from ..feed import ledger_inputs
from ..ledger import build_ledger
from ..recording import Recording, RecordingError
from .timeline import Marker

GiB = 1 << 30

# the engine's own flag name for the memory fraction, as the models take it
FRACTION_FLAG = {"vllm": "gpu_memory_utilization", "sglang": "mem_fraction_static",
                 "trtllm": "kv_cache_free_gpu_memory_fraction"}


@dataclass
class EngineTimeline:
    engine: Optional[str]
    facts: list[tuple[float, EngineFact]]          # (seconds since the first sample, fact)
    kv_engine_bytes: Optional[int] = None
    kv_t_s: Optional[float] = None
    kv_model_bytes: Optional[int] = None
    model_source: Optional[str] = None
    cache_growth_bytes: Optional[int] = None       # target page cache at the KV line minus at the start
    cgroup: Optional[str] = None
    files: list[tuple[str, int]] = field(default_factory=list)   # (path, bytes) the growth is named by
    sentences: list[str] = field(default_factory=list)
    remedies: list[str] = field(default_factory=list)

    def markers(self) -> list[Marker]:
        return [Marker(t, f"engine: {f.kind} {_short(f)}".strip(), "engine") for t, f in self.facts
                if f.kind in ("kv_cache", "weights", "admission_error", "kv_shortfall", "cuda_graph")]


def _gib(b: Optional[int]) -> str:
    return "?" if b is None else f"{b / GiB:.1f} GiB"


def _short(f: EngineFact) -> str:
    if f.value_bytes is not None:
        return _gib(f.value_bytes)
    if f.free_bytes is not None and f.requested_bytes is not None:
        return f"free {_gib(f.free_bytes)} < {_gib(f.requested_bytes)}"
    return f.text or ""


def engine_timeline(rec: Recording, host, feed, times: list[float], kv_fraction: float) -> Optional[EngineTimeline]:
    """None when the recording holds no engine facts."""
    events = rec.events("engine_fact")
    if not events:
        return None
    mono0 = rec.mono[0]
    log = EngineLog()
    placed = []
    for mono, _kind, v in events:
        try:
            f = fact_from_dict(v)
        except TypeError as e:
            raise RecordingError(f"{rec.path}: corrupt 'engine_fact' event ({e})") from None
        log.facts.append(f)
        placed.append(((mono - mono0) / 1e9, f, mono))
    tl = EngineTimeline(log.engine, [(t, f) for t, f, _ in placed])
    kv = [(t, f, m) for t, f, m in placed if f.kind == "kv_cache" and f.engine == tl.engine]
    if not kv:
        tl.sentences.append(f"The {tl.engine or 'engine'} log told no KV cache size in this recording.")
        return tl
    t_kv, _, mono_kv = kv[-1]
    tl.kv_t_s, tl.kv_engine_bytes = t_kv, log.total_bytes("kv_cache")
    i = rec.index_at(mono_kv)
    i = 0 if i is None else i
    lg0, s0 = _ledger(rec, host, feed, 0, kv_fraction)
    lg, s = (lg0, s0) if i == 0 else _ledger(rec, host, feed, i, kv_fraction)
    tl.cgroup = s.cgroup.path if s.cgroup is not None else None
    cache_now, cache0 = _target_cache(lg), _target_cache(lg0)
    if cache_now is not None and cache0 is not None:
        tl.cache_growth_bytes = cache_now - cache0
    _model(tl, log, lg, s)
    if tl.cache_growth_bytes:
        tl.files = _files_at(feed, mono0, mono_kv, tl.cache_growth_bytes)
    _sentences(tl, times)
    return tl


def _ledger(rec: Recording, host, feed, i: int, kv_fraction: float):
    s = rec.sample(i)
    try:
        inp = ledger_inputs(feed.at(s, nearest=True), feed.header)
        return build_ledger(host, s, inp, kv_fraction=kv_fraction), s
    except (TypeError, AttributeError, KeyError, ValueError) as e:
        raise RecordingError(f"{rec.path}: sample {i} cannot be explained ({type(e).__name__}: {e})") from None


def _mapped(feed, mono: int) -> dict[str, int]:
    """path -> resident bytes (else the mapping's length) of the target's mapped files at mono."""
    per: dict[str, int] = {}
    for f in (feed.mapped.value_at(mono) or {}).get("files") or []:
        b = f.get("rss_bytes") if f.get("rss_bytes") is not None else f.get("size_bytes") or 0
        per[f["path"]] = per.get(f["path"], 0) + b
    return per


def _files_at(feed, mono0: int, mono: int, growth: int) -> list[tuple[str, int]]:
    """The files the target maps at that instant (its "mapped_files" events) and did not map at
    the start, largest first, as many as cover the growth (at most 3)."""
    before, per = _mapped(feed, mono0), _mapped(feed, mono)
    out, covered = [], 0
    for path, b in sorted(((p, b) for p, b in per.items() if p not in before), key=lambda x: -x[1]):
        if covered >= growth or len(out) == 3:
            break
        out.append((path, b))
        covered += b
    return out


def _target_cache(lg) -> Optional[int]:
    return next((p.bytes for p in lg.kv.parts if p.key == "target_page_cache"), None)


def _model(tl: EngineTimeline, log: EngineLog, lg, sample) -> None:
    """The engine model's KV at that instant, fed with what the log told (fraction, weights,
    CUDA-graph memory)."""
    try:
        from .engines import MODELS, EngineState
    except ImportError:                      # the models are not part of this build
        return
    if tl.engine not in MODELS:
        return
    settings: dict = {}
    util = log.latest("utilization")
    if util is not None and util.fraction is not None and tl.engine in FRACTION_FLAG:
        settings[FRACTION_FLAG[tl.engine]] = util.fraction
    weights = log.total_bytes("weights")
    if weights is not None:
        settings["weights_bytes"] = weights
    graphs = log.total_bytes("cuda_graph")
    if graphs is not None:
        settings["cudagraph_bytes"] = graphs
    pred = MODELS[tl.engine].predict(EngineState.from_ledger(lg, sample), settings)
    tl.kv_model_bytes, tl.model_source = pred.kv_bytes, pred.source


def _sentences(tl: EngineTimeline, times: list[float]) -> None:
    said = f"{tl.engine} said {_gib(tl.kv_engine_bytes)} of KV cache at {tl.kv_t_s:.1f} s"
    model = (f"at that instant the model gives {_gib(tl.kv_model_bytes)}" if tl.kv_model_bytes is not None
             else "the engine model gives no KV figure from this recording (weights or fraction not in the log)")
    s = f"{said}; {model}"
    growth = tl.cache_growth_bytes
    if growth is not None and growth > 0:
        names = ", ".join(p for p, _ in tl.files) or "files not named (the target mapped no new file)"
        s += (f"; {_gib(growth)} of the loss against a cold-cache start is page cache of {names} "
              f"charged to {tl.cgroup or 'the target'}")
        if tl.files:
            tl.remedies.append(f"memprobe evict {' '.join(p for p, _ in tl.files)} before the engine starts: frees "
                               f"up to {_gib(min(growth, sum(b for _, b in tl.files)))} of their clean page cache "
                               "(pages a running process maps stay)")
    tl.sentences.append(s + ".")
