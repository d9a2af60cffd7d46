"""Object store throughput: cohort's put/get streams beside `cp` and boto3 alone.

Run from the repository root::

    python bench/bench_store.py                       # 1 GiB on file://, 256 MiB on s3:// (radosgw)
    python bench/bench_store.py --mb 512 --s3-mb 128 --repeats 3 --json out.json
    python bench/bench_store.py --s3-endpoint http://127.0.0.1:7480   # an S3 already running
    python bench/bench_store.py --no-s3

file:// rows: a source file of random bytes (in the page cache: the machine
cannot drop caches, so every row is warm-page-cache) is copied

* by ``cp SRC DST`` (a subprocess; GNU cp uses copy_file_range, a copy inside
  the kernel) — the reference;
* into the store through ``create_put_stream``: a Python loop (the file read
  with ``readinto`` into one 8 MiB buffer, each chunk passed to ``w.write``),
  and ``w.writefile(f)`` (from the source's page cache, each 256 KiB piece
  hashed then written while in the CPU cache; see cohort/store/fastcopy.py);
  policy ``single``, and ``replicate`` (2 copies: twice the bytes written);
* out of the store through ``create_get_stream`` to a file:
  ``shutil.copyfileobj(r, out, 4 MiB)`` (with block verification, the
  default, and with ``verify=False``) and ``r.copyto(out)``.

s3:// rows (radosgw from Debian, started like the tests do, data in RAM):
boto3 alone (``upload_fileobj`` / ``download_fileobj``, default TransferConfig)
beside cohort's put/get streams doing the same file-to-object copies
(``w.write()`` loop and ``copyfileobj``).

MB/s = 10**6 bytes / second; best and median of ``--repeats`` rounds (each
round runs every case once, so a noisy neighbour slows all of them alike).
"vs cp" is the median over rounds of cp's time / the case's time in that round. The
store checksums every byte (XXH3-128 per 4 MiB block, the default; the rows marked
sha256 use a store opened with ``checksum="sha256"``, whose file paths copy inside
the kernel while other cores hash); cp and boto3 do not. The load average is
printed before and after: on a shared machine it says how far to trust a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # the radosgw helper (tests/s3.py)

from cohort import store  # noqa: E402

MiB = 1 << 20
CHUNK = 8 * MiB


def make_source(path: Path, nbytes: int) -> None:
    with open(path, "wb") as f:
        left = nbytes
        block = os.urandom(64 * MiB)
        i = 0
        while left:
            n = min(left, len(block))
            # vary every block so no layer can deduplicate
            f.write(i.to_bytes(8, "big") + block[8:n] if n > 8 else block[:n])
            left -= n
            i += 1


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def round_robin(cases: list, repeats: int) -> list[tuple[str, list[float]]]:
    """Run every case once per round, `repeats` rounds: a noisy machine hits all alike.
    Each round starts one case later, so no case always follows the same one."""
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for r in range(repeats):
        k = r % len(cases)
        for name, fn in cases[k:] + cases[:k]:
            times[name].append(timed(fn))
    return [(name, times[name]) for name, _ in cases]


def put_stream(s, src: Path, policy: str, how: str = "write") -> str:
    with open(src, "rb", buffering=0) as f, s.create_put_stream(policy=policy) as w:
        if how == "writefile":
            w.writefile(f)
        else:
            buf = bytearray(CHUNK)
            mv = memoryview(buf)
            while n := f.readinto(buf):
                w.write(mv[:n])
    return w.oid


def get_stream(s, oid: str, dst: Path, verify: bool = True, how: str = "read") -> None:
    with s.create_get_stream(oid, verify=verify) as r, open(dst, "wb") as out:
        if how == "copyto":
            r.copyto(out)
        else:
            shutil.copyfileobj(r, out, 4 * MiB)


def bench_file(work: Path, nbytes: int, repeats: int) -> list[tuple[str, list[float]]]:
    src, dst = work / "src.bin", work / "dst.bin"
    make_source(src, nbytes)

    def cp():
        subprocess.run(["cp", str(src), str(dst)], check=True)
        os.unlink(dst)
    cp()  # warm up (and pull src into the page cache)
    cases = [("cp (reference)", cp)]

    def put_case(s, policy, how):
        def put():  # like cp's copy, each object is dropped again
            s.delete(put_stream(s, src, policy, how))
        return put

    def get_case(s, oid, verify, how):
        def get():
            get_stream(s, oid, dst, verify, how)
            os.unlink(dst)
        return get

    for algo in ("xxh3", "sha256"):
        s = store.open(f"file://{work}/store-{algo}", checksum=algo)
        tag = "" if algo == "xxh3" else ", sha256"
        puts = [("single", "write"), ("single", "writefile")]
        gets = [(True, "read"), (True, "copyto")]
        if algo == "xxh3":
            puts.append(("replicate", "writefile"))
            gets.append((False, "read"))
        for policy, how in puts:
            label = "w.write() loop" if how == "write" else "w.writefile()"
            cases.append((f"cohort put stream, {label}, {policy}{tag}", put_case(s, policy, how)))
        oid = put_stream(s, src, "single", "writefile")
        for verify, how in gets:
            label = "copyfileobj(r, f)" if how == "read" else "r.copyto()"
            label += "" if verify else ", verify=False"
            cases.append((f"cohort get stream, {label}{tag}", get_case(s, oid, verify, how)))
    rows = round_robin(cases, repeats)
    os.unlink(src)
    return rows


def bench_s3(work: Path, nbytes: int, repeats: int, endpoint: str | None,
             keys: tuple[str, str] | None) -> list[tuple[str, list[float]]]:
    import boto3
    from botocore.config import Config
    gw = None
    if endpoint is None:
        from s3 import RadosGW
        # deleted and overwritten objects wait for radosgw's garbage collector: room for
        # every round's puts and uploads, or the memstore OSD fills and requests hang
        gw = RadosGW(memstore_bytes=max(3 << 30, nbytes * (2 * repeats + 4))).start()
        endpoint, keys = gw.endpoint, (gw.access_key, gw.secret_key)
    try:
        os.environ["COHORT_S3_ENDPOINT"] = endpoint
        if keys:
            os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = keys
        c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                         config=Config(s3={"addressing_style": "path"}))
        bucket = "bench-" + os.urandom(4).hex()
        c.create_bucket(Bucket=bucket)
        src, dst = work / "src.bin", work / "dst.bin"
        make_source(src, nbytes)
        s = store.open(f"s3://{bucket}/store")

        def up():
            with open(src, "rb") as f:
                c.upload_fileobj(f, bucket, "boto3.bin")

        def down():
            with open(dst, "wb") as f:
                c.download_fileobj(bucket, "boto3.bin", f)
            os.unlink(dst)

        def put():
            s.delete(put_stream(s, src, "single"))
        up()
        oid = put_stream(s, src, "single")

        def get():
            get_stream(s, oid, dst)
            os.unlink(dst)
        rows = round_robin([("boto3 upload_fileobj", up), ("boto3 download_fileobj", down),
                            ("cohort put stream, s3://, single", put),
                            ("cohort get stream, s3://, copyfileobj(r, f)", get)], repeats)
        os.unlink(src)
        return rows
    finally:
        if gw is not None:
            gw.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=1024, help="file:// size in MiB (default 1024)")
    ap.add_argument("--s3-mb", type=int, default=256, help="s3:// size in MiB (default 256)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where to work (one file system)")
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--s3-endpoint", default=os.environ.get("COHORT_S3_ENDPOINT"),
                    help="an S3 endpoint to use instead of starting radosgw "
                         "(keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    free = shutil.disk_usage(args.dir).free
    nbytes = args.mb * MiB
    if free < 5 * nbytes:  # source, cp copy, store copies
        nbytes = max(64 * MiB, (free // 6) // MiB * MiB)
        print(f"only {free / 1e9:.1f} GB free in {args.dir}: using {nbytes // MiB} MiB",
              file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="cohort-bench-store-", dir=args.dir))
    results = []
    load_before = os.getloadavg()
    try:
        for name, times in bench_file(work, nbytes, args.repeats):
            results.append(("file", nbytes, name, times))
        if not args.no_s3:
            keys = None
            if os.environ.get("AWS_ACCESS_KEY_ID"):
                keys = (os.environ["AWS_ACCESS_KEY_ID"], os.environ.get(
                    "AWS_SECRET_ACCESS_KEY", ""))
            try:
                for name, times in bench_s3(work, args.s3_mb * MiB, args.repeats,
                                            args.s3_endpoint, keys):
                    results.append(("s3", args.s3_mb * MiB, name, times))
            except Exception as e:  # keep the file:// results
                print(f"s3:// part failed: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cp_times = results[0][3]
    print(f"\nobject store throughput, {platform.node()} ({os.cpu_count()} CPUs), "
          f"Python {platform.python_version()}, warm page cache; MB = 10**6 bytes; "
          f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    print("| what | size MiB | MB/s best | MB/s median | vs cp (median of rounds) |")
    print("|---|---:|---:|---:|---:|")
    out = []
    for kind, n, name, times in results:
        best, med = n / 1e6 / min(times), n / 1e6 / statistics.median(times)
        # each round's cp ran next to each case: compare within rounds, then take the median
        vs = (f"{statistics.median(c / t for c, t in zip(cp_times, times)) * 100:.0f} %"
              if kind == "file" else "—")
        print(f"| {name} | {n // MiB} | {best:,.0f} | {med:,.0f} | {vs} |")
        out.append({"kind": kind, "bytes": n, "name": name, "seconds": times})
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
