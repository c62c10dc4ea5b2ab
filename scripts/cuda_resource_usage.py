#!/usr/bin/env python3
"""Compile csrc/kernels.cu for sm_80 and sm_90 with ``-Xptxas -v`` and print, per kernel, the registers,
spill stores/loads, stack frame and shared memory ptxas reports. Needs nvcc only (no GPU); kernels.cu
includes no torch headers, so this takes seconds.

Usage: python scripts/cuda_resource_usage.py [extra nvcc flags...]   (CUDA_HOME defaults to /usr/local/cuda)
Exit status: 0, 1 if nvcc fails, 2 if any kernel spills.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ("80", "90")


def demangle(names):
    tool = shutil.which("c++filt")
    if not tool or not names:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def parse(log):
    """[(kernel, {regs, spill_stores, spill_loads, stack, smem})] from ptxas -v output."""
    rows, name, info = [], None, {}
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            name, info = m.group(1), {"stack": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0}
            continue
        if name is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            info.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            info["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            info["smem"] = int(s.group(1)) if s else 0
            rows.append((name, info))
            name = None
    return rows


def main(extra):
    nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    if not os.path.exists(nvcc):
        print(f"nvcc not found at {nvcc} (set CUDA_HOME)", file=sys.stderr)
        return 1
    spills = False
    with tempfile.TemporaryDirectory() as tmp:
        for sm in ARCHS:
            cmd = [
                nvcc,
                "-O3",
                "-std=c++17",
                "-cubin",
                "-gencode",
                f"arch=compute_{sm},code=sm_{sm}",
                "-Xptxas",
                "-v",
                *extra,
                "-I",
                os.path.join(ROOT, "csrc"),
                os.path.join(ROOT, "csrc", "kernels.cu"),
                "-o",
                os.path.join(tmp, f"kernels_sm{sm}.cubin"),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stdout + res.stderr, file=sys.stderr)
                return 1
            rows = parse(res.stdout + res.stderr)
            names = demangle([n for n, _ in rows])
            print(f"== sm_{sm}: {len(rows)} kernels ==")
            for pretty, (_, i) in sorted(zip(names, rows)):
                print(
                    f"  regs={i['regs']:3d} spill_st={i['spill_stores']}B spill_ld={i['spill_loads']}B "
                    f"stack={i['stack']}B smem={i['smem']}B  {pretty}"
                )
                spills |= i["spill_stores"] > 0 or i["spill_loads"] > 0
    if spills:
        print("WARNING: some kernels spill registers")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
