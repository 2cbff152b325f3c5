"""Bandwidth limits on store streams (issue 14 item 3): the token bucket with a fake
clock, the metered file, the process's registry, and the real command line backing up
and restoring at the limit, measured as a user would (the store's files, the run's log)."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import subprocess_env

from backstop.flows.demo import make_schemaless_datastore
from backstop.tasks import bandwidth
from backstop.tasks.bandwidth import MB, PIECE, MeteredFile, TokenBucket
from backstop.tasks.store import StoreSpec

BACKSTOP = str(Path(sys.executable).parent / "backstop")
TOLERANCE = 0.15


@pytest.fixture(autouse=True)
def fresh_limits():
    """A limit lasts for the rest of its process: tests that set one forget it after."""
    bandwidth.reset()
    yield
    bandwidth.reset()


class FakeClock:
    """Time that moves only when told (or by `tick` on every reading); thread-safe.
    `read_at.value` is the last reading this thread took."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 1000.0
        self.tick = tick
        self._lock = threading.Lock()
        self.read_at = threading.local()

    def __call__(self) -> float:
        with self._lock:
            self.now += self.tick
            self.read_at.value = self.now
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


# -- the bucket -----------------------------------------------------------------------------
def test_a_full_bucket_lets_its_burst_pass_then_meters_at_the_rate():
    clock, slept = FakeClock(), []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    bucket = TokenBucket(1000, burst=100, clock=clock, sleep=sleep)
    bucket.acquire(100)
    assert slept == []  # the burst
    bucket.acquire(50)
    assert slept == [pytest.approx(0.05)]
    clock.advance(0.02)  # 20 tokens earned while idle
    bucket.acquire(50)
    assert slept[-1] == pytest.approx(0.03)
    clock.advance(10)  # idle for long: the bucket refills to its burst, no further
    bucket.acquire(100)
    bucket.acquire(1)
    assert slept[-1] == pytest.approx(0.001)
    # 10,000 more bytes take 10 s, in pieces of at most the burst
    before, start = len(slept), clock.now
    bucket.acquire(10_000)
    assert clock.now - start == pytest.approx(10.0, rel=1e-6)
    assert len(slept) - before == 100


def test_the_default_burst_is_a_tenth_of_a_second_or_256_kib():
    assert TokenBucket(5 * MB).burst == 500_000
    assert TokenBucket(0.1 * MB).burst == 256 << 10


def test_a_lowered_rate_applies_from_then_on():
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=100, clock=clock, sleep=clock.advance)
    bucket.acquire(100)
    bucket.set_rate(100)
    start = clock.now
    bucket.acquire(100)
    assert clock.now - start == pytest.approx(1.0)


@pytest.mark.parametrize("rate", [0, -1, float("nan"), float("inf")])
def test_a_rate_must_be_finite_and_positive(rate):
    with pytest.raises(ValueError):
        TokenBucket(rate)


def test_threads_together_never_get_more_than_rate_times_time_plus_burst():
    """Eight threads take pieces of one bucket at once; every grant is recorded at the
    (fake) time its caller may use it, and at no time have more bytes been granted than
    burst + rate * elapsed."""
    rate, burst = 10_000.0, 2_000.0
    clock = FakeClock(tick=0.0001)  # time moves a little at every reading
    start = clock.now
    granted: list[tuple[float, int]] = []
    record = threading.Lock()
    local = threading.local()

    def sleep(seconds: float) -> None:
        local.delay = seconds

    bucket = TokenBucket(rate, burst=burst, clock=clock, sleep=sleep)

    def worker(seed: int) -> None:
        for i in range(400):
            n = 1 + (seed * 7919 + i * 104729) % 1500
            local.delay = 0.0
            bucket.acquire(n)
            # reserve() read the clock once: the grant holds from then + the delay
            with record:
                granted.append((clock.read_at.value + local.delay, n))

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)

    assert len(granted) == 8 * 400
    total = 0
    for when, n in sorted(granted):
        total += n
        assert total <= burst + rate * (when - start) + 1e-6, (total, when - start)
    # and the bucket is no stricter than the rate either: the last grant comes when
    # the bytes beyond the burst have been paid for
    last = max(when for when, _ in granted)
    assert last - start <= (total - burst) / rate + 1.0


# -- the metered file ---------------------------------------------------------------------
class Recorder(TokenBucket):
    """A real bucket (fake time) that also keeps the size of every acquire."""

    def __init__(self, rate: float = 1 * MB) -> None:
        self.clock = FakeClock()
        super().__init__(rate, clock=self.clock, sleep=self.clock.advance)
        self.sizes: list[int] = []

    def acquire(self, n: int) -> None:
        self.sizes.append(n)
        super().acquire(n)


def test_one_large_write_is_metered_in_pieces():
    bucket = Recorder(rate=64 * MB)
    out = io.BytesIO()
    data = os.urandom(1 << 20) * 64  # 64 MiB
    start = bucket.clock.now
    assert MeteredFile(out, bucket).write(data) == len(data)
    assert out.getvalue() == data
    assert max(bucket.sizes) <= PIECE and sum(bucket.sizes) == len(data)
    elapsed = bucket.clock.now - start
    assert elapsed == pytest.approx((len(data) - bucket.burst) / bucket.rate, rel=1e-6)


def test_reads_are_metered_in_pieces_and_return_what_the_file_would():
    data = os.urandom(1_000_000)
    bucket = Recorder()
    fh = MeteredFile(io.BytesIO(data), bucket)
    assert fh.read(10) == data[:10]
    assert fh.read(300_000) == data[10:300_010]
    buffer = bytearray(200_000)
    assert fh.readinto(buffer) == 200_000 and bytes(buffer) == data[300_010:500_010]
    assert fh.read1(5) == data[500_010:500_015]
    assert fh.read() == data[500_015:]
    assert fh.read() == b"" and fh.read(5) == b""
    assert max(bucket.sizes) <= PIECE and sum(bucket.sizes) == len(data)


def test_everything_else_is_the_files_own(tmp_path):
    path = tmp_path / "f"
    bucket = Recorder()
    with MeteredFile(open(path, "w+b"), bucket) as fh:
        fh.write(b"hello world")
        fh.flush()
        assert fh.tell() == 11
        fh.seek(6)
        assert fh.read() == b"world"
        assert fh.name == str(path) and fh.writable() and not fh.closed
        assert fh.fileno() >= 0
    assert fh.closed  # the context manager closed the file itself
    with pytest.raises(ValueError):  # the file's own error, of its own type
        fh.write(b"x")
    read_only = MeteredFile(open(path, "rb"), bucket)  # noqa: SIM115
    with pytest.raises(io.UnsupportedOperation):
        read_only.write(b"x")
    assert list(read_only) == [b"hello world"]
    read_only.close()
    assert read_only.closed


def test_no_limit_is_no_wrapper():
    fh = io.BytesIO()
    assert bandwidth.metered(fh, None) is fh


# -- the process's registry and the store -------------------------------------------------
def test_one_bucket_per_direction_and_the_smaller_limit_wins():
    upload = bandwidth.bucket(bandwidth.UPLOAD, 10)
    assert bandwidth.bucket(bandwidth.UPLOAD, 20) is upload and upload.rate == 10 * MB
    assert bandwidth.bucket(bandwidth.UPLOAD, 5) is upload and upload.rate == 5 * MB
    assert bandwidth.bucket(bandwidth.UPLOAD, None) is None
    assert bandwidth.bucket(bandwidth.DOWNLOAD, 7) is not upload
    assert bandwidth.limits() == {"upload": 5, "download": 7}


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "abc"])
def test_a_deployments_limit_is_checked_by_the_store_spec(value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        StoreSpec(url="/x", limit_upload_mb_s=value)
    with pytest.raises(ValidationError):
        StoreSpec(url="/x", limit_download_mb_s=value)


def test_a_store_without_limits_meters_nothing(tmp_path):
    store = StoreSpec(url=str(tmp_path / "store")).open()
    path = store.file_path("schemaless", "20260101T000000Z-abcd", "a.zst")
    with store.open_write(path) as fh:
        assert not isinstance(fh, MeteredFile)
    with store.open_read(path) as fh:
        assert not isinstance(fh, MeteredFile)


def test_store_reads_through_a_limited_spec_share_one_download_limit(tmp_path):
    """Two threads read 10 MB each through ArtifactStore.open_read of a spec limited to
    8 MB/s: together they take 2.5 s (20 MB / 8 MB/s), not half of it."""
    limit = 8
    store = StoreSpec(url=str(tmp_path / "store"), limit_download_mb_s=limit).open()
    paths = [store.file_path("schemaless", "20260101T000000Z-abcd", f"{i}.zst") for i in (0, 1)]
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(os.urandom(10 * MB))
    got = [0, 0]

    def read(i: int) -> None:
        with store.open_read(paths[i]) as fh:
            while data := fh.read(1 << 20):
                got[i] += len(data)

    threads = [threading.Thread(target=read, args=(i,)) for i in (0, 1)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = sum(got) / MB / (time.monotonic() - started)
    assert got == [10 * MB, 10 * MB]
    assert rate == pytest.approx(limit, rel=TOLERANCE), f"{rate:.2f} MB/s"


# -- the command line, end to end -----------------------------------------------------------
def incompressible_datastore(folder: Path, shards: int, cells: int, body: int) -> list[str]:
    """Shards of the demo's schema whose cell bodies are random bytes (zstd cannot shrink
    them: the store holds about cells * body bytes)."""
    urls = make_schemaless_datastore(folder, shards=shards, cells=cells)
    for url in urls:
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("UPDATE cells SET body = randomblob(?)", (body,))
    return urls


def verbose_env(api_url: str) -> dict[str, str]:
    """-v shows the runs' INFO lines (the session keeps the console at WARNING)."""
    env = subprocess_env(api_url)
    env.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", None)
    env.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS", None)
    return env


def data_files(store: Path) -> list[Path]:
    return sorted(store.glob("schemaless/*/**/*.zst"))


@pytest.mark.integration
@pytest.mark.slow
def test_a_backup_uploads_at_the_limit(prefect_harness, tmp_path):
    """50 MB of incompressible cells in two shards, backed up (two streams at once) with
    --limit-upload 5, the store's data files watched as they grow.

    Over the whole time the files were being written (the first one's creation to the
    last one's last write) they never went faster than the limit, the bucket's start
    included; and while bytes were flowing they went at the limit. (A pause of the
    backup's own, such as its first batch, the quality validator starting or a loaded
    machine, only makes the whole-time rate lower: it is not the limit's doing.)"""
    limit = 5
    sources = incompressible_datastore(tmp_path / "source", shards=2, cells=1000, body=50_000)
    store = tmp_path / "store"
    argv = [BACKSTOP, "-v", "backup", "schemaless", "--store", str(store), "--json"]
    argv += [a for url in sources for a in ("--source", url)]
    argv += ["--limit-upload", str(limit)]
    first_seen: dict[Path, float] = {}
    samples: list[tuple[float, int]] = []  # (when, bytes in the data files)
    done = threading.Event()

    def watch() -> None:  # as a user watching the store would see it
        while not done.is_set():
            now, size = time.time(), 0
            for path in data_files(store):
                first_seen.setdefault(path, now)
                with contextlib.suppress(OSError):
                    size += path.stat().st_size
            samples.append((now, size))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=600, env=verbose_env(prefect_harness)
        )
    finally:
        done.set()
        watcher.join()
    assert proc.returncode == 0, proc.stderr
    files = data_files(store)
    assert len(files) == 2 and set(first_seen) == set(files)
    stored = sum(f.stat().st_size for f in files)
    assert stored > 50 * MB
    seconds = max(f.stat().st_mtime for f in files) - min(first_seen.values())
    overall = stored / MB / seconds
    flowing = sum(
        later - earlier
        for (earlier, before), (later, after) in itertools.pairwise(samples)
        if after > before
    )
    moved = max(size for _, size in samples) - min(size for _, size in samples)
    active = moved / MB / flowing
    print(f"upload: {overall:.2f} MB/s over {seconds:.1f} s; {active:.2f} MB/s flowing")
    assert overall <= limit * (1 + TOLERANCE), f"{overall:.2f} MB/s over {seconds:.1f} s"
    assert active == pytest.approx(limit, rel=TOLERANCE), f"{active:.2f} MB/s over {flowing:.1f} s"
    # said once in the run's log, without the store's URL
    line = f"upload limited to {limit} MB/s"
    assert proc.stderr.count(line) == 1, proc.stderr
    said = next(s for s in proc.stderr.splitlines() if line in s)
    assert str(store) not in said


@pytest.mark.integration
@pytest.mark.slow
def test_a_restore_downloads_at_the_limit(prefect_harness, tmp_path):
    """A 20 MB backup restored with --limit-download 5: the restore's own figures for
    the shard (bytes read from the store, seconds) give 5 MB/s."""
    limit = 5
    sources = incompressible_datastore(tmp_path / "source", shards=1, cells=200, body=100_000)
    store = tmp_path / "store"
    env = verbose_env(prefect_harness)
    backed_up = subprocess.run(
        [BACKSTOP, "backup", "schemaless", "--store", str(store), "--source", sources[0]],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert backed_up.returncode == 0, backed_up.stderr
    target = f"sqlite:///{tmp_path / 'restored.db'}"
    argv = [BACKSTOP, "-v", "restore", "schemaless", "--store", str(store), "--target", target]
    argv += ["--limit-download", str(limit), "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    figures = re.search(r"restore shard-000: .*\bbytes=(\d+) .*\bseconds=([\d.]+)", proc.stderr)
    assert figures, proc.stderr
    stored, seconds = int(figures[1]), float(figures[2])
    assert stored > 20 * MB
    rate = stored / MB / seconds
    print(f"download: {rate:.2f} MB/s over {seconds:.1f} s")
    assert rate == pytest.approx(limit, rel=TOLERANCE), f"{rate:.2f} MB/s over {seconds:.1f} s"
    assert f"download limited to {limit} MB/s" in proc.stderr


@pytest.mark.parametrize("rate", [1e-9, 0.001, 1e7, 1e308])
def test_a_limit_that_cannot_work_is_refused_by_the_store_spec(tmp_path, rate):
    """1e-9 MB/s would wait two years for one piece; a deployment parameter is checked
    as the CLI checks its flags."""
    from pydantic import ValidationError

    from backstop.tasks.store import StoreSpec

    with pytest.raises(ValidationError):
        StoreSpec(url=str(tmp_path), limit_download_mb_s=rate)

