"""Run every rule, keep what each said, rank the findings."""
from __future__ import annotations

from .model import Finding, RuleResult
from .rules_common import SEVERITY_ORDER, Ctx, Skip
from .rules_memcg import (charges_without_processes, driver_kernel_memory, first_touch, gpu_uncharged,
                          managed_double_view, pinned_shmem)
from .rules_kernel import huge_blocks_scarce, reclaim_stalls, reserve_hides_free
from .rules_uma import kv_cache_thief, limit_cannot_hold, uma_tool_sum

RULES = [kv_cache_thief, gpu_uncharged, limit_cannot_hold, managed_double_view, driver_kernel_memory,
         pinned_shmem, first_touch, uma_tool_sum, charges_without_processes, reserve_hides_free,
         huge_blocks_scarce, reclaim_stalls]


def rank(findings: list[Finding]) -> list[Finding]:
    """Most severe first, then most bytes, then rule name (a total order: stable output)."""
    return sorted(findings, key=lambda x: (SEVERITY_ORDER[x.severity], -x.bytes, x.rule))


def run_rules(ctx: Ctx) -> tuple[list[Finding], list[RuleResult]]:
    findings, results = [], []
    for rule in RULES:
        out = rule(ctx)
        if isinstance(out, Skip):
            results.append(RuleResult(rule.__name__, "silent", out.reason))
        elif out is None:
            results.append(RuleResult(rule.__name__, "clear", "checked: nothing to report"))
        else:
            findings.append(out)
            results.append(RuleResult(rule.__name__, "raised"))
    return rank(findings), results
