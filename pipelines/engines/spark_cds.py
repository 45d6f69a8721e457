"""Class data sharing (AppCDS) for the Spark driver JVM: its classes are parsed once, into an archive that every
later driver maps instead of loading thousands of classes from Spark's jars again.

Every Spark stage is a fresh process, so every stage pays a JVM start, and on the shipped sample that start is most
of the stage. JDK 13+ can dump the classes a run loaded into a dynamic archive (`-XX:ArchiveClassesAtExit`) and map
it in later runs (`-XX:SharedArchiveFile`). Measured on the 2-core box (bench/results/spark_startup.json, medians):
a session 7.2 -> 3.3 s with the archive and C1 only (`engines.spark.driver_java_options`), and the ingest / dedup
stages of the test workspace 37.1 -> 25.1 s and 28.9 -> 14.6 s, at half the CPU or less.

The archive belongs to one Java binary and one Spark (its classpath is checked when mapped), so its name carries
both; it is built once per machine, by whichever driver first needs it, under a lock (a driver that finds the lock
taken runs without it). A JVM that cannot map the archive runs without it (`-Xshare:auto`, Java's default): a
stale or foreign archive costs the start-up it would have saved, never a failure.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 300
CACHE_ENV = "LLMOPS_SPARK_CDS_DIR"  # where archives live (default: ~/.cache/llmops/spark-cds)


def cache_dir() -> Path:
    if where := os.environ.get(CACHE_ENV):
        return Path(where)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmops" / "spark-cds"


def java_binary() -> Path | None:
    """The `java` spark-submit runs: $JAVA_HOME/bin/java, else the one on PATH (spark-class's own rule)."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).exists() else None


def archive_path() -> Path | None:
    """The archive for this Java and this pyspark (None without a Java to key it on)."""
    import pyspark

    java = java_binary()
    if java is None:
        return None
    stat = java.stat()
    key = hashlib.sha256(f"{java}|{stat.st_size}|{stat.st_mtime_ns}|{pyspark.__version__}|"
                         f"{Path(pyspark.__file__).parent}".encode()).hexdigest()[:16]
    return cache_dir() / f"spark-{pyspark.__version__}-{key}.jsa"


def ensure_archive() -> Path | None:
    """The archive, built first if missing. None when it cannot be had now (no Java, another process building it,
    or the build failed): the caller starts Spark without it."""
    path = archive_path()
    if path is None:
        return None
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # being built by another driver right now: this one starts without it
        if path.exists():
            return path
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            proc = subprocess.run([sys.executable, "-m", __name__, str(tmp)], capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT_S)
            if proc.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
                log.warning("Spark class-data archive not built (rc=%s): %s", proc.returncode, proc.stderr[-2000:])
                return None
            os.replace(tmp, path)  # whole or absent: a reader never maps a half-written archive
            log.info("Spark class-data archive built: %s", path)
            return path
        except subprocess.TimeoutExpired:
            log.warning("Spark class-data archive not built: over %s s", BUILD_TIMEOUT_S)
            return None
        finally:
            tmp.unlink(missing_ok=True)


def java_options(archive: Path | None) -> str:
    return f"-XX:SharedArchiveFile={archive}" if archive else ""


def dump(target: Path) -> None:
    """Run the kind of work the stages do (DataFrames, a shuffle, a join, a window, a Python UDF, Parquet out and
    in) on a one-core local session whose JVM writes the classes it loaded to `target` when it exits."""
    from pyspark.sql import SparkSession, Window
    from pyspark.sql import functions as F
    from pyspark import SparkContext

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    spark = (SparkSession.builder.master("local[1]").appName("llmops-cds")
             .config("spark.driver.extraJavaOptions", f"-XX:ArchiveClassesAtExit={target}")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", "1").getOrCreate())
    jvm = SparkContext._gateway.proc  # the JVM writes the archive as it exits, after this process's last call
    with tempfile.TemporaryDirectory() as tmp:
        df = spark.createDataFrame([(i, f"text {i % 7}") for i in range(200)], ["id", "text"])
        upper = F.udf(lambda s: s.upper(), "string")
        df = df.withColumn("u", upper("text")).withColumn("n", F.row_number().over(
            Window.partitionBy("text").orderBy("id")))
        df.join(df.groupBy("text").count(), "text").write.parquet(f"{tmp}/t")
        spark.read.parquet(f"{tmp}/t").where(F.col("n") == 1).collect()
        spark.read.json(spark.sparkContext.parallelize(['{"a": 1}'])).count()
    spark.stop()
    jvm.stdin.close()  # the gateway exits on EOF; the archive is complete once the process has ended
    jvm.wait(timeout=BUILD_TIMEOUT_S)


if __name__ == "__main__":
    dump(Path(sys.argv[1]))
