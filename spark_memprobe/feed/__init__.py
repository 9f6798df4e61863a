"""Samples over time for a resolved target, live or replayed: FeedItems (items.py).

The live feed (live.py) follows a target on this machine; ReplayFeed (replay.py) reads a
recording. Both hand the same items to the same views and the ledger is recomputed from them
(items.py ledger_inputs), so a replay shows what the live run showed. follow.py follows one target,
multi.py many (the exporter's set), recorder.py writes items into a recording, ticker.py
keeps the pace. Nothing here imports cli/ or views/.
"""
from __future__ import annotations

from .items import FeedHeader, FeedItem, ledger_inputs, ledger_of, mapped_files_from_event, others_from_event

__all__ = ["FeedHeader", "FeedItem", "ledger_inputs", "ledger_of", "mapped_files_from_event", "others_from_event"]
