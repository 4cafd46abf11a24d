"""Shrink a CUDA wheel for one GPU architecture before it travels: blank the other architectures' device code.

onnxruntime-gpu's CUDA provider library carries each kernel as SASS for sm_75, 80, 86, 89, 90 and 120 in its
``.nv_fatbin`` section (~218 of its 284 MB). The CUDA runtime loads only the image that matches the device, so for a
Hopper machine every non-sm_90 image is dead weight in transit. This tool overwrites those images' payloads with
zeros in place (no offset, size or header changes, so the library's layout and its fat-binary headers stay valid)
and rewrites the wheel with LZMA members, which the zeros then cost nothing: 256 MB -> ~70 MB, two device calls
instead of six. The result runs only on the kept architectures; it is a staging artefact, never something to ship.

Fat-binary layout (as nvcc writes it; documented by its readers, e.g. cuobjdump's): a container header
``magic u32 = 0xBA55ED50, version u16, header_size u16, body_size u64``, then entries
``kind u16, version u16, header_size u32, payload_size u64, ...`` with the SM architecture as a u32 at offset 28;
the payload follows the entry header. Containers sit back to back in the section, 8-byte aligned.

Stdlib only: ``python tools/slim_wheel.py WHEEL --keep-sm 90 --out DIR``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
_CONTAINER = struct.Struct("<IHHQ")
_ENTRY = struct.Struct("<HHIQ")
_ARCH_OFFSET = 28
_ELF_MAGIC = b"\x7fELF"


class SlimError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


@dataclass(frozen=True)
class FatbinEntry:
    arch: int
    kind: int  # 1 = PTX, 2 = ELF (SASS)
    payload_offset: int  # in the file
    payload_size: int


def fatbin_section(elf: bytes | bytearray) -> tuple[int, int] | None:
    """(offset, size) of the ``.nv_fatbin`` section of a little-endian ELF64 file, or None if it has none."""
    if elf[:4] != _ELF_MAGIC or elf[4] != 2 or elf[5] != 1:
        return None
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    if shoff == 0 or shnum == 0:
        return None

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        name = struct.unpack_from("<I", elf, base)[0]
        offset, size = struct.unpack_from("<QQ", elf, base + 0x18)
        return name, offset, size

    _, names_offset, names_size = header(shstrndx)
    names = bytes(elf[names_offset : names_offset + names_size])
    for i in range(shnum):
        name, offset, size = header(i)
        if names[name : names.index(b"\0", name)] == b".nv_fatbin":
            return offset, size
    return None


def fatbin_entries(elf: bytes | bytearray, section: tuple[int, int]) -> list[FatbinEntry]:
    offset, size = section
    end = offset + size
    entries: list[FatbinEntry] = []
    pos = offset
    while pos + _CONTAINER.size <= end:
        magic, _, header_size, body_size = _CONTAINER.unpack_from(elf, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # alignment padding between containers
            continue
        entry, body_end = pos + header_size, pos + header_size + body_size
        if body_end > end:
            raise SlimError(f"fat-binary container at byte {pos} runs past its section's end ({body_end} > {end})")
        while entry < body_end:
            kind, _, entry_header, payload = _ENTRY.unpack_from(elf, entry)
            arch = struct.unpack_from("<I", elf, entry + _ARCH_OFFSET)[0]
            entries.append(FatbinEntry(arch, kind, entry + entry_header, payload))
            entry += entry_header + payload
        pos = body_end
    return entries


def blank_other_archs(elf: bytearray, keep: set[int]) -> tuple[int, set[int]]:
    """Zero, in place, the payload of every fat-binary entry whose arch is not in ``keep``.

    Returns (bytes zeroed, archs found). Refuses a library none of whose entries is for a kept arch: the blanked
    copy would load nothing on the target GPU."""
    section = fatbin_section(elf)
    if section is None:
        return 0, set()
    entries = fatbin_entries(elf, section)
    archs = {e.arch for e in entries}
    if entries and not archs & keep:
        raise SlimError(f"no device code for sm_{sorted(keep)} in this library (it has sm_{sorted(archs)})")
    zeroed = 0
    for e in entries:
        if e.arch not in keep:
            elf[e.payload_offset : e.payload_offset + e.payload_size] = bytes(e.payload_size)
            zeroed += e.payload_size
    return zeroed, archs


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def slim_wheel(wheel: Path, out: Path, keep: set[int]) -> tuple[Path, dict[str, tuple[int, set[int]]]]:
    """Write ``out/<wheel's name>`` with every shared library blanked to ``keep`` and RECORD updated."""
    if not wheel.is_file():
        raise SlimError(f"wheel {wheel} not found")
    out.mkdir(parents=True, exist_ok=True)
    target = out / wheel.name
    if target.resolve() == wheel.resolve():
        raise SlimError(f"--out {out} holds the input wheel itself: choose another folder")
    report: dict[str, tuple[int, set[int]]] = {}
    with zipfile.ZipFile(wheel) as src:
        members = {info.filename: src.read(info) for info in src.infolist()}
        infos = src.infolist()
    for name, data in members.items():
        if data[:4] == _ELF_MAGIC:
            blob = bytearray(data)
            zeroed, archs = blank_other_archs(blob, keep)
            if archs:
                members[name] = bytes(blob)
                report[name] = (zeroed, archs)
    if not report:
        raise SlimError(f"{wheel.name} holds no library with CUDA device code: nothing to slim")
    records = [n for n in members if n.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        raise SlimError(f"{wheel.name} has {len(records)} RECORD files, expected 1")
    lines = []
    for line in members[records[0]].decode().splitlines():
        path = line.split(",", 1)[0]
        lines.append(f"{path},{_record_hash(members[path])},{len(members[path])}" if path in report else line)
    members[records[0]] = ("\n".join(lines) + "\n").encode()
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_LZMA) as dst:
        for info in infos:
            copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            copy.external_attr = info.external_attr  # keeps the libraries executable
            dst.writestr(copy, members[info.filename], compress_type=zipfile.ZIP_LZMA)
    partial.replace(target)
    return target, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slim_wheel", description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--keep-sm", type=int, action="append", required=True, help="SM arch to keep, e.g. 90")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        target, report = slim_wheel(args.wheel, args.out, set(args.keep_sm))
    except SlimError as exc:
        print(f"slim_wheel: error: {exc}", file=sys.stderr)
        return 1
    for name, (zeroed, archs) in report.items():
        print(f"{name}: sm_{sorted(archs)} found, {zeroed / 1e6:.1f} MB of other archs blanked")
    print(f"{target}: {args.wheel.stat().st_size / 1e6:.1f} MB -> {target.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
