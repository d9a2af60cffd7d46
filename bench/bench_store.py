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
* into the store through ``create_put_stream`` (the file read with ``readinto``
  into one 8 MiB buffer, each chunk passed to ``w.write``), policy ``single``
  and ``replicate`` (2 copies, so twice the bytes written);
* out of the store through ``create_get_stream`` to a file
  (``shutil.copyfileobj(r, out, 4 MiB)``), with block verification on (the
  default) and off (``verify=False``).

s3:// rows (radosgw from Debian, started like the tests do, data in RAM):
boto3 alone (``upload_fileobj`` / ``download_fileobj``, default TransferConfig)
beside cohort's put/get streams doing the same file-to-object copies.

MB/s = 10**6 bytes / second; best and median of ``--repeats`` runs. The
store checksums every byte (CRC-32 per 4 MiB block by default; the rows marked
sha256 use a store opened with ``checksum="sha256"``); cp and boto3 do not.
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


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def put_stream(s, src: Path, policy: str) -> str:
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    with open(src, "rb", buffering=0) as f, s.create_put_stream(policy=policy) as w:
        while n := f.readinto(buf):
            w.write(mv[:n])
    return w.oid


def get_stream(s, oid: str, dst: Path, verify: bool = True) -> None:
    with s.create_get_stream(oid, verify=verify) as r, open(dst, "wb") as out:
        shutil.copyfileobj(r, out, 4 * MiB)


def bench_file(work: Path, nbytes: int, repeats: int) -> list[tuple[str, list[float]]]:
    src, dst = work / "src.bin", work / "dst.bin"
    make_source(src, nbytes)
    rows = []

    def cp():
        subprocess.run(["cp", str(src), str(dst)], check=True)
        os.unlink(dst)
    cp()  # warm up (and pull src into the page cache)
    rows.append(("cp (reference)", timed(cp, repeats)))

    s = store.open(f"file://{work}/store")
    rows += _file_rows(s, src, dst, repeats, ("single", "replicate"), "")
    s = store.open(f"file://{work}/store-sha256", checksum="sha256")
    rows += _file_rows(s, src, dst, repeats, ("single",), ", sha256")
    os.unlink(src)
    return rows


def _file_rows(s, src: Path, dst: Path, repeats: int, policies, tag: str):
    rows = []
    for policy in policies:
        oids = []

        def put():
            oids.append(put_stream(s, src, policy))
            if len(oids) > 1:  # like cp's copy, each repeat's object is dropped
                s.delete(oids.pop())
        rows.append((f"cohort put stream, file://, {policy}{tag}", timed(put, repeats)))
        if policy == "single":
            for verify in (True, False) if not tag else (True,):
                def get():
                    get_stream(s, oids[0], dst, verify)
                    os.unlink(dst)
                label = "verified" if verify else "verify=False"
                rows.append((f"cohort get stream, file://, {label}{tag}", timed(get, repeats)))
        s.delete(oids[0])
    return rows


def bench_s3(work: Path, nbytes: int, repeats: int, endpoint: str | None,
             keys: tuple[str, str] | None) -> list[tuple[str, list[float]]]:
    import boto3
    from botocore.config import Config
    gw = None
    if endpoint is None:
        from s3 import RadosGW
        gw = RadosGW().start()
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
        rows = []

        def up():
            with open(src, "rb") as f:
                c.upload_fileobj(f, bucket, "boto3.bin")
        rows.append(("boto3 upload_fileobj", timed(up, repeats)))

        def down():
            with open(dst, "wb") as f:
                c.download_fileobj(bucket, "boto3.bin", f)
            os.unlink(dst)
        rows.append(("boto3 download_fileobj", timed(down, repeats)))
        c.delete_object(Bucket=bucket, Key="boto3.bin")

        s = store.open(f"s3://{bucket}/store")
        oids = []

        def put():
            oids.append(put_stream(s, src, "single"))
            if len(oids) > 1:
                s.delete(oids.pop(0))
        rows.append(("cohort put stream, s3://, single", timed(put, repeats)))

        def get():
            get_stream(s, oids[-1], dst)
            os.unlink(dst)
        rows.append(("cohort get stream, s3://, verified", timed(get, repeats)))
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
    try:
        for name, times in bench_file(work, nbytes, args.repeats):
            results.append(("file", nbytes, name, times))
        if not args.no_s3:
            keys = None
            if os.environ.get("AWS_ACCESS_KEY_ID"):
                keys = (os.environ["AWS_ACCESS_KEY_ID"], os.environ.get(
                    "AWS_SECRET_ACCESS_KEY", ""))
            for name, times in bench_s3(work, args.s3_mb * MiB, args.repeats,
                                        args.s3_endpoint, keys):
                results.append(("s3", args.s3_mb * MiB, name, times))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cp_best = min(results[0][3])
    print(f"\nobject store throughput, {platform.node()} ({os.cpu_count()} CPUs), "
          f"Python {platform.python_version()}, warm page cache; MB = 10**6 bytes")
    print("| what | size MiB | MB/s best | MB/s median | best vs cp |")
    print("|---|---:|---:|---:|---:|")
    out = []
    for kind, n, name, times in results:
        best, med = n / 1e6 / min(times), n / 1e6 / statistics.median(times)
        vs = f"{cp_best / min(times) * 100:.0f} %" if kind == "file" else "—"
        print(f"| {name} | {n // MiB} | {best:,.0f} | {med:,.0f} | {vs} |")
        out.append({"kind": kind, "bytes": n, "name": name, "seconds": times})
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
