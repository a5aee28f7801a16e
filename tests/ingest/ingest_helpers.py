"""Test inputs for ingest: tiny videos and image folders written with OpenCV, and a Kafka reader."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
from kafka import KafkaConsumer

from schemas.config import KafkaSettings


def numbered_image(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    """A frame whose mean brightness encodes ``i``, so a test can tell frames apart after JPEG."""
    return np.full((height, width, 3), (i * 20) % 250, np.uint8)


def write_video(path: Path, count: int, fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for i in range(count):
        writer.write(numbered_image(i))
    writer.release()
    return path


def write_images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:04d}.png"), numbered_image(i))
    return folder


def consume(kafka: KafkaSettings, topic: str, expected: int, timeout_s: float = 20.0) -> list:
    """Read ``expected`` records (or what arrives within ``timeout_s``) from the start of ``topic``."""
    consumer = KafkaConsumer(
        topic, **kafka.client_kwargs(), group_id=None, auto_offset_reset="earliest", enable_auto_commit=False
    )
    records: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


class TcpProxy:
    """Forward a local port to the broker; ``start()`` late to play a broker that comes back.

    Only the bootstrap connection goes through it: the broker then advertises its own address.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        import socket

        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()  # free again: nothing listens until start()
        self._server: "socket.socket | None" = None
        self._open: list = []

    def start(self) -> None:
        import socket
        import threading

        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        self._server = server

        def pipe(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.close()
                    except OSError:
                        pass

        def accept():
            while True:
                try:
                    client, _ = server.accept()
                except OSError:
                    return
                upstream = socket.create_connection(self.target)
                self._open += [client, upstream]
                threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
                threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def stop(self) -> None:
        for s in [self._server, *self._open]:
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
