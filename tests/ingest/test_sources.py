import time

import pytest

from ingest.sources import CameraLost, ImageFolderSource, ReconnectingSource, SourceError, VideoFileSource, open_source
from ingest_helpers import write_images, write_video
from schemas.config import CameraSource, IngestSettings

FAST = IngestSettings(reconnect_initial_s=0.02, reconnect_max_s=0.1, reconnect_give_up_s=5.0)


def brightness(image) -> int:
    return int(round(float(image.mean())))


def test_video_file_reads_every_frame_then_ends(tmp_path):
    source = VideoFileSource(write_video(tmp_path / "cam.avi", 5))
    frames = [source.read() for _ in range(6)]
    source.close()
    assert all(f is not None and f.shape == (48, 64, 3) for f in frames[:5])
    assert frames[5] is None
    assert [brightness(f) for f in frames[:5]] == pytest.approx([0, 20, 40, 60, 80], abs=3)


def test_image_folder_is_read_in_name_order(tmp_path):
    folder = write_images(tmp_path / "imgs", 4)
    (folder / "notes.txt").write_text("not an image")
    source = ImageFolderSource(folder)
    assert [brightness(source.read()) for _ in range(4)] == [0, 20, 40, 60]
    assert source.read() is None


def test_missing_sources_raise_source_error(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        open_source(CameraSource(video=tmp_path / "nope.avi"))
    with pytest.raises(SourceError, match="not found"):
        open_source(CameraSource(images=tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(CameraSource(images=tmp_path / "empty"))


def test_file_source_starts_again_at_its_end_without_counting_a_reconnect(tmp_path):
    source = ReconnectingSource(CameraSource(video=write_video(tmp_path / "cam.avi", 3)), FAST)
    values = [brightness(source.read()) for _ in range(7)]
    source.close()
    assert values == pytest.approx([0, 20, 40, 0, 20, 40, 0], abs=3)
    assert source.reconnects == 0


def test_source_that_disappears_is_reconnected_when_it_returns(tmp_path):
    folder = write_images(tmp_path / "imgs", 3)
    source = ReconnectingSource(CameraSource(images=folder), FAST)
    assert source.read() is not None
    folder.rename(tmp_path / "moved")  # the camera goes away mid-stream

    def restore_later():
        time.sleep(0.4)
        (tmp_path / "moved").rename(folder)

    import threading

    restorer = threading.Thread(target=restore_later)
    restorer.start()
    started = time.monotonic()
    image = source.read()  # blocks, retrying with backoff, until the folder is back
    restorer.join()
    source.close()
    assert image is not None
    assert time.monotonic() - started >= 0.35
    assert source.reconnects == 1


def test_source_that_never_returns_is_reported_lost(tmp_path):
    settings = IngestSettings(reconnect_initial_s=0.02, reconnect_max_s=0.05, reconnect_give_up_s=0.3)
    source = ReconnectingSource(CameraSource(images=tmp_path / "never"), settings)
    started = time.monotonic()
    with pytest.raises(CameraLost, match="no frames"):
        source.read()
    assert 0.3 <= time.monotonic() - started < 2.0


def test_stop_interrupts_the_backoff(tmp_path):
    settings = IngestSettings(reconnect_initial_s=5.0, reconnect_max_s=5.0, reconnect_give_up_s=60.0)
    deadline = time.monotonic() + 0.3
    source = ReconnectingSource(CameraSource(images=tmp_path / "never"), settings, stop=lambda: time.monotonic() > deadline)
    assert source.read() is None
    assert time.monotonic() - deadline < 1.0
