"""A promoted student that fails to load once (its weights still being copied, a transient
out-of-memory) is tried again by the polling reload, after a backoff, and swapped in once it loads;
one whose calibration fails is told apart from one that cannot load."""

from __future__ import annotations

import errno
import shutil

import httpx

from potstill.redistill.promote import switch
from potstill.serve import calibration
from potstill.serve import service as service_module
from tests.serve.conftest import SERVE_KEY
from tests.serve.test_hot_swap import _wait, swap_run  # noqa: F401 (swap_run: the fixture)


def test_a_promotion_that_failed_to_load_is_tried_again(swap_run, monkeypatch):  # noqa: F811
    """It was never tried again until RUN/student pointed elsewhere: a server whose promoted student
    failed once kept serving the old one for good, though the files were whole a moment later."""
    run, service, _ = swap_run
    monkeypatch.setattr(service_module, "RELOAD_RETRY_S", 0.3)
    good = run / "students" / "b"
    broken = run / "students" / "c"
    broken.mkdir()
    shutil.copy(good / "config.json", broken / "config.json")
    (broken / "model.safetensors").write_bytes(b"not whole yet")
    old = service.student_name
    service.watch(0.05)
    switch(run, broken)
    _wait(lambda: service._failed is not None)
    assert service.student_name == old and not service.swaps
    for f in good.iterdir():  # the copy finishes
        shutil.copy(f, broken / f.name)
    _wait(lambda: service.swaps, timeout=60)
    assert service.swaps[-1]["previous"] == old and service.student_name != old


def test_a_load_error_that_reads_as_markup_leaves_the_watcher_polling(swap_run, monkeypatch, capfd):  # noqa: F811
    """The watcher's log line printed the error through rich, whose markup a message such as
    "d['w'][0] [/x]" breaks (MarkupError): the watcher's thread died there, and no promotion was
    picked up again until a restart."""
    run, service, _ = swap_run
    monkeypatch.setattr(service_module, "RELOAD_RETRY_S", 0.05)
    tries = []

    def reload() -> None:
        tries.append(1)
        raise OSError("cannot read d['w'][0] [/x]")

    monkeypatch.setattr(service, "reload", reload)
    service.watch(0.05)
    switch(run, run / "students" / "b")
    _wait(lambda: len(tries) >= 3)  # tried again after each failure: still polling
    assert service._watcher.is_alive()
    assert "could not load the promoted student" in capfd.readouterr().err


def test_a_hot_swap_whose_calibration_fails_says_so_not_that_the_student_cannot_load(swap_run, monkeypatch):  # noqa: F811
    """The promoted student loads; its calibration's cache cannot be written (the disk is full).
    Before, the 409 said "cannot load <student>"."""
    run, service, live = swap_run
    old = service.student_name

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(calibration, "write_text", full_disk)
    switch(run, run / "students" / "b")
    r = httpx.post(live.url + "/admin/reload", headers={"Authorization": f"Bearer {SERVE_KEY}"}, timeout=60)
    message = r.json()["error"]["message"]
    assert r.status_code == 409 and message.startswith(f"reload failed, still serving {old}: ")
    assert "cannot load" not in message
    assert "cannot calibrate routing for" in message and "OSError" in message and "No space left" in message
    assert service.student_name == old and not service.swaps
