"""Compile the Triton nearest-code kernel for every cell of its tile table, without a GPU, and report what
ptxas says: register spills, registers per thread, shared memory per block. Exits 1 if any cell spills or
needs more shared memory than its architecture has.

    python benchmarks/kernel_spills.py                 # sm_80 and sm_90, both precisions, D = 16 .. 256
    python benchmarks/kernel_spills.py --out spills.md

Needs Triton with its bundled ptxas (the Linux wheels that torch's CUDA builds pull in); no GPU, no driver.
"""

from __future__ import annotations

import argparse
import sys

from vqkit.search_triton import PRECISIONS, SHARED_BYTES, arch_family, ptxas_report

CAPABILITIES = [(8, 0), (9, 0)]
WIDTHS = [16, 32, 64, 128, 256]  # the padded D of each one-block cell, and 256: the loop over D


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write the table (markdown) here")
    args = p.parse_args()
    lines = [
        "| arch | precision | D | spill stores (B) | spill loads (B) | registers | shared (KiB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    bad = 0
    for capability in CAPABILITIES:
        for precision in PRECISIONS:
            for d in WIDTHS:
                r = ptxas_report(d, precision, capability)
                over = r["shared"] > SHARED_BYTES[arch_family(capability)]
                bad += bool(r["spill_stores"] or r["spill_loads"] or over)
                lines.append(
                    f"| sm_{capability[0]}{capability[1]} | {precision} | {d} | {r['spill_stores']} | "
                    f"{r['spill_loads']} | {r['registers']} | {r['shared'] / 1024:.0f}{' (too much)' if over else ''} |"
                )
                print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    print(f"{bad} cell(s) spill or overflow shared memory" if bad else "no spills")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
