"""Philips real-time export (XTC) written from a whole-run PAR/REC pair, independently of hyper-rt: one PAR/REC
pair per volume, each holding one dynamic, its "Acquisition nr" counting the volumes from 1 (as Pyneal Scanner
reads the real-time export). Used by the tests and by scripts/bench_export_watch.py."""

import re


def write_realtime_series(par_path, n_volumes):
    """Splits the run of `par_path` (a version 4.2 PAR and its REC) into `n_volumes` pairs, cycling through its
    dynamics when more volumes than dynamics are asked for. Returns [(name, PAR text, REC bytes)], named
    `vol_0001` ... in acquisition order."""
    text = par_path.read_text(encoding="latin-1")
    rec = par_path.with_suffix(".REC").read_bytes()
    head, _, rest = text.partition("# === IMAGE INFORMATION ====")
    table_head, _, tail = rest.partition("\n\n")
    lines = [l.split() for l in tail.splitlines() if l.strip() and not l.startswith("#")]
    footer = "\n".join(l for l in tail.splitlines() if l.startswith("#"))
    # V4.2 columns: 2 dynamic, 6 index in REC, 7 bits, 9-10 recon resolution
    dynamics = sorted({int(r[2]) for r in lines})
    pairs = []
    for t in range(n_volumes):
        dynamic = dynamics[t % len(dynamics)]
        rows = [list(r) for r in lines if int(r[2]) == dynamic]
        image_bytes = int(rows[0][9]) * int(rows[0][10]) * int(rows[0][7]) // 8
        images = b"".join(rec[int(r[6]) * image_bytes:(int(r[6]) + 1) * image_bytes] for r in rows)
        for k, r in enumerate(rows):
            r[2], r[6] = "1", str(k)  # one dynamic per pair, its images from 0
        par = re.sub(r"(Acquisition nr\s*:\s*)\d+", rf"\g<1>{t + 1}", head)
        par = re.sub(r"(Max\. number of dynamics\s*:\s*)\d+", r"\g<1>1", par)
        par += "# === IMAGE INFORMATION ====" + table_head + "\n\n" + "\n".join("  ".join(r) for r in rows)
        par += "\n\n" + footer + "\n"
        pairs.append((f"vol_{t + 1:04d}", par, images))
    return pairs
