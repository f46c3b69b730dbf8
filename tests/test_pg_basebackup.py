"""PostgreSQL 15's own pg_basebackup against a walswitch primary makes a standby that walswitch runs.

Plain (-Fp) and tar (-Ft, unpacked with tarfile) backups with -X stream (a second connection
streams WAL through a temporary slot) and -R (standby.signal and postgresql.auto.conf); each copy
starts with ``walswitch start``, streams, and matches the primary.  The produced backup is
checked against the exclusion lists, and with pg_verifybackup; over TLS (verify-full) with SCRAM from a
passfile as a REPLICATION role too.  ``run_pg_basebackup`` takes extra
conninfo and environment, so a test can add ``sslmode=verify-full`` and a passfile.
"""
from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.cluster import Node, pg_tool, wait_for, walswitch
from storage.kvstore import dump as kv_dump
from tests.invariants import check_data_equal, wait_streaming

PRIMARY_FILES_PLANTED = ("postmaster.opts", "pgsql_tmp_junk", "pg_stat_tmp/stats.tmp", "log/extra.log",
                         "global/pg_internal.init")


def run_pg_basebackup(primary: Node, datadir: str, *args: str, conninfo: dict | None = None,
                      env: dict | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """pg_basebackup -d <primary's conninfo + extra> -D DIR -X stream -R ARGS (as this user: it is not a
    server, root may run it)."""
    dsn = primary.dsn(**(conninfo or {}))
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([pg_tool("pg_basebackup"), "-d", dsn, "-D", datadir, "-X", "stream", "-R", *args],
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def write_rows(node: Node, start: int, n: int) -> None:
    with node.connect() as c, c.cursor() as cur:
        for i in range(start, start + n):
            cur.execute("INSERT INTO kv VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (f"k{i:05d}", f"v{i}" * 20))


def plant_excluded(primary: Node) -> None:
    """Files PostgreSQL's base backup leaves out (and our log directory's contents)."""
    for rel in PRIMARY_FILES_PLANTED:
        p = Path(primary.datadir, rel)
        p.parent.mkdir(mode=0o700, exist_ok=True)
        p.write_text("not for the copy\n")


def start_standby(primary: Node, standby: Node) -> None:
    standby.set_conf(port=standby.port, wal_retrieve_retry_interval="1s", archive_mode="off")
    standby.start(wait_ready=False)
    wait_streaming(standby, 60)
    write_rows(primary, 1000, 50)       # after the backup: streamed, not copied
    check_data_equal(primary, standby)


@pytest.mark.timeout(240)
def test_pg_basebackup_plain_stream_makes_a_standby(nodes):
    primary = nodes.primary()
    write_rows(primary, 0, 300)
    plant_excluded(primary)
    standby = nodes("standby")
    r = run_pg_basebackup(primary, standby.datadir, "-Fp", "-P", "-v", "--checkpoint=fast")
    assert r.returncode == 0, r.stderr
    assert 'created temporary replication slot "pg_basebackup_' in r.stderr
    assert "(100%), 1/1 tablespace" in r.stderr                    # progress from the 'p' messages
    d = Path(standby.datadir)
    # -R: what PostgreSQL's pg_basebackup writes, read by walswitch after walswitch.conf
    assert (d / "standby.signal").exists()
    auto = (d / "postgresql.auto.conf").read_text()
    assert "primary_conninfo = '" in auto and f"port={primary.port}" in auto
    assert (d / "backup_label").exists() and (d / "backup_manifest").exists()
    # PostgreSQL's exclusion list and ours: nothing of these reached the copy
    for rel in PRIMARY_FILES_PLANTED + ("postmaster.pid", "log/walswitch.log", "log/events.jsonl",
                                        "base/kv.sqlite-wal", "base/kv.sqlite-shm"):
        assert not (d / rel).exists(), rel
    assert (d / "log").is_dir() and (d / "pg_stat_tmp").is_dir()  # excluded contents, directories kept
    assert [p.name for p in d.iterdir() if p.name.startswith("pgsql_tmp")] == []
    assert sorted(p.name for p in (d / "pg_wal").iterdir() if p.is_file())   # only what -X stream received
    # pg_verifybackup checks every file against the manifest, and parses the WAL range with pg_waldump
    v = subprocess.run([pg_tool("pg_verifybackup"), standby.datadir], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and "backup successfully verified" in v.stdout, v.stderr
    ev = primary.events("base_backup")[-1]
    assert ev["label"] == "pg_basebackup base backup" and ev["manifest"] == "yes" and ev["progress"]
    start_standby(primary, standby)
    # the startup used backup_label once (as PostgreSQL renames it)
    assert not (d / "backup_label").exists() and (d / "backup_label.old").exists()
    standby.wait_log("starting backup recovery with redo LSN")
    # a backup's temporary files (a killed walsender's snapshot) go at the next start, as RemovePgTempFiles
    Path(primary.datadir, "pgsql_tmp_basebackup_x").mkdir()
    Path(primary.datadir, "pgsql_tmp_basebackup_x", "kv.sqlite").write_bytes(b"left over")
    primary.stop()
    primary.start()
    assert [p.name for p in Path(primary.datadir).iterdir() if p.name.startswith("pgsql_tmp")] == []


@pytest.mark.timeout(240)
def test_pg_basebackup_tar_unpacked_makes_a_standby(nodes, tmp_path):
    primary = nodes.primary()
    write_rows(primary, 0, 200)
    out = tmp_path / "tar"
    r = run_pg_basebackup(primary, str(out), "-Ft", "--manifest-checksums=SHA256")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["backup_manifest", "base.tar", "pg_wal.tar"]
    with tarfile.open(out / "base.tar") as tf:
        names = tf.getnames()
    assert names[0] == "backup_label" and "tablespace_map" in names            # TABLESPACE_MAP (tar format)
    assert "standby.signal" in names and "postgresql.auto.conf" in names       # injected by pg_basebackup -R
    assert not [n for n in names if n.startswith("pg_wal/") and n != "pg_wal/archive_status"]
    assert "postmaster.pid" not in names and not [n for n in names if n.startswith("log/")]
    standby = nodes("standby")
    os.makedirs(standby.datadir, mode=0o700)
    with tarfile.open(out / "base.tar") as tf:
        tf.extractall(standby.datadir, filter="data")
    with tarfile.open(out / "pg_wal.tar") as tf:
        tf.extractall(os.path.join(standby.datadir, "pg_wal"), filter="data")
    # The tar files unpack to what a plain backup taken next holds: the same files (but the
    # backup's own: label, tablespace map, manifest, WAL) and the same rows.
    plain = tmp_path / "plain"
    r = run_pg_basebackup(primary, str(plain))
    assert r.returncode == 0, r.stderr
    own = {"backup_label", "tablespace_map", "backup_manifest"}

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and p.name not in own and not str(p.relative_to(root)).startswith("pg_wal/")}

    unpacked = tmp_path / "unpacked"      # a copy to read: the standby's own stays untouched
    with tarfile.open(out / "base.tar") as tf:
        tf.extractall(unpacked, filter="data")
    assert files(unpacked) == files(plain)
    rows = kv_dump(str(unpacked))[0]
    assert len(rows) >= 200 and rows == kv_dump(str(plain))[0]
    start_standby(primary, standby)


@pytest.mark.timeout(120)
def test_pg_basebackup_refusals_and_no_slot(nodes):
    """--no-slot works; a persistent slot and server-side compression are refused with 0A000, and
    pg_basebackup removes what it had made."""
    primary = nodes.primary()
    write_rows(primary, 0, 20)
    target = Path(primary.base, "refused")
    for args, needle in ((("-C", "-S", "keep_me"), "only temporary physical replication slots are supported"),
                         (("--compress=server-gzip",), 'BASE_BACKUP compression "gzip" is not supported')):
        r = run_pg_basebackup(primary, str(target), *args)
        assert r.returncode != 0 and needle in r.stderr, (args, r.stderr)
        assert not target.exists() or not any(target.iterdir())
    standby = nodes("standby")
    r = run_pg_basebackup(primary, standby.datadir, "--no-slot", "-c", "fast")
    assert r.returncode == 0, r.stderr
    start_standby(primary, standby)
    wait_for(lambda: primary.sql("SELECT count(*) FROM pg_stat_replication")[0][0] == 1, 30,
             "only the standby's walsender left on the primary")


def test_postgresql_conf_files_read_after_walswitch_conf(tmp_path):
    """walswitch.conf, then postgresql.conf, then postgresql.auto.conf (PostgreSQL's order); settings
    walswitch does not have are left alone there."""
    from utils import config as cfgmod
    (tmp_path / "walswitch.conf").write_text("port = 5433\nwal_receiver_timeout = '5s'\n")
    (tmp_path / "postgresql.conf").write_text("port = 5434\nshared_buffers = '128MB'\nwal_receiver_timeout = 7s\n")
    (tmp_path / "postgresql.auto.conf").write_text("wal_receiver_timeout = '9s'\nwork_mem = 4MB\n")
    cfg = cfgmod.load(str(tmp_path))
    assert cfg["port"] == 5434 and cfg["wal_receiver_timeout"] == 9000
    assert cfg.sources["port"].endswith("postgresql.conf:1")
    assert cfg.sources["wal_receiver_timeout"].endswith("postgresql.auto.conf:1")


@pytest.mark.timeout(120)
def test_wait_for_archiving_refused_while_archiving(nodes, tmp_path):
    """-X none asks the server to wait for the archiving of the backup's WAL (WAIT true): with
    archive_mode off PostgreSQL's notice and a backup; with it on, 0A000 (walswitch cannot wait for
    it), while -X stream (WAIT false) works."""
    primary = nodes.primary(archive_mode="on", archive_command="true")
    r = subprocess.run([pg_tool("pg_basebackup"), "-d", primary.dsn(), "-D", str(tmp_path / "none"), "-X", "none"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "BASE_BACKUP option WAIT true is not supported by walswitch" in r.stderr
    r = run_pg_basebackup(primary, str(tmp_path / "stream"))
    assert r.returncode == 0, r.stderr
    other = nodes.primary("noarchive")
    r = subprocess.run([pg_tool("pg_basebackup"), "-d", other.dsn(), "-D", str(tmp_path / "none2"), "-X", "none",
                        "--max-rate=1024"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "NOTICE:  WAL archiving is not enabled" in r.stderr, r.stderr


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fmt", ["p", "t"])
def test_pg_basebackup_over_tls_scram_passfile(nodes, tmp_path, fmt):
    """Issue 10's case: pg_basebackup -U repl -X stream -R over sslmode=verify-full, SCRAM from a passfile;
    the standby streams with the primary_conninfo pg_basebackup wrote, and matches the primary."""
    p = nodes("primary")
    walswitch("init", "-D", p.datadir, "--wal-segsize", "1", "-p", str(p.port), "-U", "postgres", "--ssl")
    Path(p.datadir, "pg_hba.conf").write_text(
        "host all postgres 127.0.0.1/32 trust\n"
        "hostssl replication repl 127.0.0.1/32 scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
    p.start()
    p.sql("CREATE ROLE repl LOGIN REPLICATION PASSWORD 'r3pl-secret'")
    write_rows(p, 0, 100)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"localhost:{p.port}:*:repl:r3pl-secret\n")
    passfile.chmod(0o600)
    tls = {"host": "localhost", "hostaddr": "127.0.0.1", "user": "repl", "sslmode": "verify-full",
           "sslrootcert": os.path.join(p.datadir, "root.crt"), "channel_binding": "require"}
    s = nodes("standby")
    target = s.datadir if fmt == "p" else str(tmp_path / "tar")
    r = run_pg_basebackup(p, target, f"-F{fmt}", conninfo=tls, env={"PGPASSFILE": str(passfile)})
    assert r.returncode == 0, r.stderr
    if fmt == "t":
        os.makedirs(s.datadir, mode=0o700)
        with tarfile.open(os.path.join(target, "base.tar")) as tf:
            tf.extractall(s.datadir, filter="data")
        with tarfile.open(os.path.join(target, "pg_wal.tar")) as tf:
            tf.extractall(os.path.join(s.datadir, "pg_wal"), filter="data")
    auto = Path(s.datadir, "postgresql.auto.conf").read_text()
    assert "sslmode=''verify-full''" in auto and "user=repl" in auto and "r3pl-secret" not in auto
    # the standby finds the password where pg_basebackup did: PGPASSFILE, in its environment
    s.set_conf(port=s.port, wal_retrieve_retry_interval="1s", archive_mode="off")
    env = {**os.environ, "PGPASSFILE": str(passfile)}
    walswitch("start", "-D", s.datadir, "--detach", "--no-wait-ready", env=env)
    wait_streaming(s, 60)
    write_rows(p, 1000, 30)
    check_data_equal(p, s)
    for n in (p, s):
        assert "r3pl-secret" not in n.log_text()
