"""A recording's timeline, worked out for the report: what views/ renders.

  timeline.py    series per sample (scalar columns, the GPU through the ledger's own facts),
                 rises, and the moments that matter (start, model load, KV-cache sizing, ...)
  report.py      analyse(): moments with their ledgers, findings over the run, what was not
                 measured (ReportData)
  files.py       the page-cache files at the peak (eBPF ownership, else the target's mappings)
  cuda_calls.py  CUDA allocations by kind and the largest calls (eBPF uprobes)
  compare.py     two runs side by side: row and file differences and their causes

Pure functions of a Recording (recording.py's reader API) through feed (ReplayFeed and
ledger_inputs, so a report's ledgers are the ones replay and attach show); no views, no cli,
no text with bytes in it: views/ formats every number. Missing data stays None.
"""
