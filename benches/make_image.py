#!/usr/bin/env python3
"""Make the benchmark images: SIZE bytes of mixed content in 64 MiB segments
(a quarter real compressible binaries from /usr, a quarter random, half
written zeros), and a copy with PCT percent rewritten in 1 MiB extents at
random places. Deterministic for a given seed."""
import os, random, sys

def binaries(n):
    out = bytearray()
    for root in ("/usr/bin", "/usr/lib", "/usr/libexec"):
        for dp, _, files in os.walk(root):
            for f in sorted(files):
                p = os.path.join(dp, f)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                try:
                    with open(p, "rb") as fh:
                        out += fh.read(n - len(out))
                except OSError:
                    continue
                if len(out) >= n:
                    return bytes(out)
    return bytes(out) + bytes(n - len(out))

def main():
    path, changed, size, pct = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    seg = 64 << 20
    rng = random.Random(42)
    bins = binaries(size // 4)
    with open(path, "wb") as f:
        bi = 0
        for i in range(size // seg):
            kind = i % 4
            if kind == 0:
                f.write(bins[bi:bi + seg]); bi += seg
            elif kind == 1:
                f.write(rng.randbytes(seg))
            else:
                f.write(bytes(seg))
    os.system(f"cp --reflink=never {path} {changed}")
    extent = 1 << 20
    n = int(size * pct / 100) // extent
    with open(changed, "r+b") as f:
        for _ in range(n):
            off = rng.randrange(0, size // extent) * extent + rng.randrange(0, extent // 4096) * 4096
            off = min(off, size - extent)
            f.seek(off)
            f.write(rng.randbytes(extent))
    print(f"{path}: {size} bytes; {changed}: {n} extents of 1 MiB rewritten")

main()
