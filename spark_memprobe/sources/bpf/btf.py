"""Enum names from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The memcg tracepoints carry stat items as bare integers whose meaning depends on the kernel
build (enum node_stat_item, enum memcg_stat_item, enum vm_event_item change between
versions), so the names come from the kernel's own type information, never from headers.
Format: Documentation/bpf/btf.rst (struct btf_header, struct btf_type and per-kind trailers).
"""
from __future__ import annotations

import struct
from typing import Iterable, Optional

BTF_MAGIC = 0xEB9F

# bytes that follow struct btf_type for each kind (vlen = number of members/values/params)
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}             # INT, ARRAY, VAR, DECL_TAG
_PER_VLEN = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}   # STRUCT, UNION, ENUM, FUNC_PROTO, DATASEC, ENUM64
KIND_ENUM, KIND_ENUM64 = 6, 19


class BTFError(Exception):
    pass


def read_enums(wanted: Iterable[str], path: str = "/sys/kernel/btf/vmlinux") -> dict[str, dict[int, str]]:
    """{enum name: {value: enumerator name}} for the wanted enums found in the BTF file."""
    with open(path, "rb") as f:
        data = f.read()
    return parse_enums(data, set(wanted))


def parse_enums(data: bytes, wanted: set[str]) -> dict[str, dict[int, str]]:
    if len(data) < 24:
        raise BTFError("file too short")
    magic, version, flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != BTF_MAGIC:
        raise BTFError(f"bad magic {magic:#x} (not little-endian BTF)")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    types = hdr_len + type_off
    strings = hdr_len + str_off
    end = types + type_len

    def name(off: int) -> str:
        s = strings + off
        e = data.index(b"\0", s)
        return data[s:e].decode("ascii", "replace")

    out: dict[str, dict[int, str]] = {}
    pos = types
    unpack = struct.unpack_from
    while pos < end:
        name_off, info, _size = unpack("<III", data, pos)
        pos += 12
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        if kind in (KIND_ENUM, KIND_ENUM64) and name_off and name(name_off) in wanted:
            signed = bool(info >> 31)          # kind_flag: signed enumerators
            vals: dict[int, str] = {}
            step = 8 if kind == KIND_ENUM else 12
            for i in range(vlen):
                p = pos + i * step
                if kind == KIND_ENUM:
                    eoff, v = unpack("<Ii" if signed else "<II", data, p)
                else:
                    eoff, lo, hi = unpack("<III", data, p)
                    v = lo | (hi << 32)
                vals[v] = name(eoff)
            out[name(name_off)] = vals
            if len(out) == len(wanted):
                break
        if kind in _FIXED:
            pos += _FIXED[kind]
        elif kind in _PER_VLEN:
            pos += _PER_VLEN[kind] * vlen
        elif kind not in (0, 2, 7, 8, 9, 10, 11, 12, 16, 18):
            raise BTFError(f"unknown BTF kind {kind} at offset {pos - 12}")
    return out


def memcg_item_names(path: str = "/sys/kernel/btf/vmlinux") -> tuple[dict[int, str], dict[int, str], Optional[str]]:
    """(stat item names, vm event names, note). Stat items: enum node_stat_item and enum
    memcg_stat_item share one index space (memcg_stat_item starts at NR_VM_NODE_STAT_ITEMS,
    include/linux/memcontrol.h), which is what both memcg state tracepoints carry."""
    try:
        enums = read_enums({"node_stat_item", "memcg_stat_item", "vm_event_item"}, path)
    except (OSError, BTFError) as e:
        return {}, {}, f"memcg item names unknown ({path}: {e}); items shown as numbers"
    stat: dict[int, str] = {}
    stat.update(enums.get("node_stat_item", {}))
    stat.update(enums.get("memcg_stat_item", {}))
    note = None if stat else f"no node_stat_item/memcg_stat_item enums in {path}; items shown as numbers"
    return stat, enums.get("vm_event_item", {}), note
