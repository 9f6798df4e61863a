"""The ledger: for one target at one instant, every view of the same bytes side by side.

Rows are physical kinds of memory, columns are the views tools show (memory.current, docker
stats, memory.stat keys, RSS, meminfo, NVML, CUDA free); findings name the bytes counted twice,
counted nowhere, and the KV-cache budget that cudaMemGetInfo denies. Pure functions of
samples (and optional eBPF results): this package never imports spark_memprobe.sources.
"""
from .build import build_ledger
from .inputs import LedgerInputs, MappedFile, PageCacheBytes, from_probe_report
from .model import Column, CudaFree, Finding, GapPart, KvBudget, Ledger, Row, RuleResult, ledger_to_dict

__all__ = ["build_ledger", "LedgerInputs", "MappedFile", "PageCacheBytes", "from_probe_report", "Column",
           "CudaFree", "Finding", "GapPart", "KvBudget", "Ledger", "Row", "RuleResult", "ledger_to_dict"]
