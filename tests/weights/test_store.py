"""kaito_runtime.weights.store: the weights folder check, the marker, refs and the bytes a resume keeps."""

from __future__ import annotations

import errno
import os

import pytest

from kaito_runtime.weights import store
from kaito_runtime.errors import InputError
from tests.support.steps import RemoteFile
from kaito_runtime.weights.store import (
    MARKER_NAME,
    check_weights_dir,
    held_on_disk,
    partial_path,
    read_marker,
    read_ref,
    write_marker,
    write_ref,
)
from tests.support.weights_helpers import no_writes_under

COMMIT = "a" * 40


# --- check_weights_dir ----------------------------------------------------------------------------


def test_an_existing_writable_folder_is_accepted_and_nothing_is_created(tmp_path):
    check_weights_dir(tmp_path)
    check_weights_dir(tmp_path / "not" / "yet")  # its nearest existing ancestor is what counts
    assert not (tmp_path / "not").exists()


def test_create_makes_the_folder(tmp_path):
    check_weights_dir(tmp_path / "a" / "b", create=True)
    assert (tmp_path / "a" / "b").is_dir()


@pytest.mark.parametrize("create", [False, True])
def test_a_file_in_the_way_is_refused(tmp_path, create):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(InputError) as itself:
        check_weights_dir(blocker, create=create)
    assert "It is a file, not a folder" in str(itself.value) and "--weights-dir" in str(itself.value)
    with pytest.raises(InputError) as below:
        check_weights_dir(blocker / "sub", create=create)
    assert f"{blocker} is a file, not a folder" in str(below.value)
    assert blocker.read_text() == "x"


def test_a_broken_link_is_refused(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(InputError, match="a broken link, not a folder"):
        check_weights_dir(link / "w")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_folder_that_cannot_be_created_is_an_input_error(tmp_path, code):
    with no_writes_under(tmp_path, code) as attempts, pytest.raises(InputError) as info:
        check_weights_dir(tmp_path / "w", create=True)
    assert attempts, "the check must have tried to create the folder"
    msg = str(info.value)
    assert info.value.exit_code == 2
    assert "cannot be created" in msg and os.strerror(code) in msg and "read-write" in msg
    assert not (tmp_path / "w").exists()


def test_an_existing_read_only_folder_is_accepted_with_create_and_without_writable(tmp_path, monkeypatch):
    monkeypatch.setattr(store.os, "access", lambda path, mode: False)
    with no_writes_under(tmp_path) as attempts:
        check_weights_dir(tmp_path, writable=False, create=True)
        check_weights_dir(tmp_path / "x", writable=False)
    assert attempts == []


def test_an_unwritable_folder_is_refused_when_writing_is_needed(tmp_path, monkeypatch):
    asked: list[tuple[str, int]] = []

    def access(path, mode):  # type: ignore[no-untyped-def]
        asked.append((str(path), mode))
        return False

    monkeypatch.setattr(store.os, "access", access)
    with pytest.raises(InputError) as itself:
        check_weights_dir(tmp_path)
    assert "is not writable" in str(itself.value) and f"uid {os.getuid()}" in str(itself.value)
    assert asked[-1] == (str(tmp_path), os.W_OK | os.X_OK)
    with pytest.raises(InputError) as parent:
        check_weights_dir(tmp_path / "new" / "w")
    assert f"its parent {tmp_path}" in str(parent.value)


# --- marker, refs, partials -----------------------------------------------------------------------


def test_the_marker_vouches_only_for_files_of_their_size(tmp_path):
    files = [RemoteFile("config.json", 2), RemoteFile("model.safetensors", 5, sha256="b" * 64)]
    (tmp_path / "config.json").write_bytes(b"{}")
    (tmp_path / "model.safetensors").write_bytes(b"12345")
    write_marker(tmp_path, "org/tiny", COMMIT, "hf", files)
    assert read_marker(tmp_path, "org/tiny", COMMIT) == files
    assert read_marker(tmp_path, "org/other", COMMIT) is None
    assert read_marker(tmp_path, "org/tiny", "b" * 40) is None
    (tmp_path / "model.safetensors").write_bytes(b"1234")
    assert read_marker(tmp_path, "org/tiny", COMMIT) is None
    (tmp_path / MARKER_NAME).write_text("not json")
    assert read_marker(tmp_path, "org/tiny", COMMIT) is None
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_refs_round_trip_and_ignore_anything_but_a_commit(tmp_path):
    assert read_ref(tmp_path, "main") is None
    write_ref(tmp_path, "release/v1", COMMIT)
    assert read_ref(tmp_path, "release/v1") == COMMIT
    assert (tmp_path / "refs" / "release%2Fv1").is_file()
    (tmp_path / "refs" / "main").write_text("not-a-commit")
    assert read_ref(tmp_path, "main") is None


def test_held_on_disk_counts_finished_files_and_partials_capped_at_the_file_size(tmp_path):
    done, pending = RemoteFile("a.safetensors", 3000, sha256="a" * 64), RemoteFile("b.safetensors", 1000, sha256="b" * 64)
    short = RemoteFile("c.safetensors", 500, sha256="c" * 64)
    (tmp_path / "a.safetensors").write_bytes(b"x" * 3000)
    (tmp_path / "c.safetensors").write_bytes(b"x" * 10)  # a final file of the wrong size counts for nothing
    part = partial_path(tmp_path, pending)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"y" * 5000)  # a partial larger than its file counts as the file's size at most
    assert held_on_disk(tmp_path, [done, pending, short]) == {"a.safetensors": 3000, "b.safetensors": 1000, "c.safetensors": 0}
