"""The Spark driver's JVM settings (engines.spark: driver_java_options, class_data_sharing): the session maps the
class-data archive it was built with, a foreign archive never stops a JVM, and building is locked and atomic."""
from __future__ import annotations

import fcntl
import subprocess

from pipelines.engines import spark_cds


def test_the_session_runs_with_c1_and_the_class_data_archive(spark):
    from pipelines.stages.registry import shared_config

    cfg = shared_config("engines").spark
    options = spark.sparkContext.getConf().get("spark.driver.extraJavaOptions")
    archive = spark_cds.archive_path()
    assert cfg.class_data_sharing and archive is not None and archive.exists()
    assert f"-XX:SharedArchiveFile={archive}" in options and cfg.driver_java_options in options
    # the archive really is mapped: the driver JVM's own view of its flags
    flags = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()
    assert f"-XX:SharedArchiveFile={archive}" in list(flags)
    assert spark.range(10).count() == 10


def test_a_foreign_or_broken_archive_only_costs_start_up(tmp_path):
    broken = tmp_path / "broken.jsa"
    broken.write_bytes(b"not an archive" * 100)
    java = spark_cds.java_binary()
    proc = subprocess.run([str(java), f"-XX:SharedArchiveFile={broken}", "-version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_building_is_locked_and_leaves_no_partial_archive(tmp_path, monkeypatch):
    monkeypatch.setenv(spark_cds.CACHE_ENV, str(tmp_path))
    path = spark_cds.archive_path()
    assert path.parent == tmp_path and not path.exists()
    with open(path.with_suffix(".lock"), "w") as held:  # another driver is building it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert spark_cds.ensure_archive() is None  # this one starts without it, at once
    assert spark_cds.java_options(None) == ""
    # a failed build (here: an interpreter that cannot run the dump) leaves nothing behind
    monkeypatch.setattr(spark_cds.sys, "executable", "/bin/false")
    assert spark_cds.ensure_archive() is None
    assert [p.name for p in tmp_path.iterdir()] == [path.with_suffix(".lock").name]
