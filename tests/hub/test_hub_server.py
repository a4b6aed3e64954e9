"""The real huggingface_hub client against the loopback test Hub: upload, download, revisions, offline, errors."""

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

REPO = "tester/tiny"
WEIGHTS = os.urandom(2 << 20)  # 2 MB of binary: goes through LFS
WEIGHTS_SHA256 = hashlib.sha256(WEIGHTS).hexdigest()


@pytest.fixture
def pushed(hub, tmp_path):
    """A repo with a text file, a README and LFS weights on main; returns the upload's CommitInfo."""
    folder = tmp_path / "upload"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("version 1\n")
    (folder / "sub" / "config.json").write_text('{"hidden": 32}\n')
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    (folder / "model.safetensors").write_bytes(WEIGHTS)
    api = HfApi()
    assert api.create_repo("tiny").repo_id == REPO
    return api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="add model")


def test_upload_then_download_file_and_snapshot(hub, pushed, tmp_path):
    api = HfApi()
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    weights = hf_hub_download(REPO, "model.safetensors")
    assert Path(weights).read_bytes() == WEIGHTS
    assert f"snapshots/{pushed.oid}/" in weights
    snapshot = snapshot_download(REPO, cache_dir=tmp_path / "fresh-cache")
    assert sorted(os.listdir(snapshot)) == ["README.md", "model.safetensors", "notes.txt", "sub"]
    assert Path(snapshot, "model.safetensors").read_bytes() == WEIGHTS
    assert Path(snapshot, "sub", "config.json").read_text() == '{"hidden": 32}\n'

    tree = {entry.path: entry for entry in api.list_repo_tree(REPO, recursive=True)}
    assert tree["model.safetensors"].lfs.sha256 == WEIGHTS_SHA256 and tree["notes.txt"].lfs is None
    top_level = sorted(entry.path for entry in api.list_repo_tree(REPO))
    assert top_level == ["README.md", "model.safetensors", "notes.txt", "sub"]
    assert [info.path for info in api.get_paths_info(REPO, ["sub", "notes.txt", "missing"])] == ["sub", "notes.txt"]
    assert [commit.title for commit in api.list_repo_commits(REPO)] == ["add model", "initial commit"]
    assert [model.id for model in api.list_models(search="tiny")] == [REPO]
    assert api.whoami()["name"] == "tester"


def test_branches_tags_and_commit_shas_each_give_their_version(hub, pushed, tmp_path):
    api = HfApi()
    api.create_tag(REPO, tag="v1")
    api.create_branch(REPO, branch="dev/next")
    update = api.upload_file(
        path_or_fileobj=b"version 2\n", path_in_repo="notes.txt", repo_id=REPO, revision="dev/next"
    )
    expected = {
        "main": "version 1\n",
        "v1": "version 1\n",
        pushed.oid: "version 1\n",
        "dev/next": "version 2\n",
        update.oid: "version 2\n",
    }
    for revision, text in expected.items():
        assert Path(hf_hub_download(REPO, "notes.txt", revision=revision)).read_text() == text, revision
        folder = snapshot_download(REPO, revision=revision, cache_dir=tmp_path / "snapshots")
        assert Path(folder, "notes.txt").read_text() == text, revision

    refs = api.list_repo_refs(REPO)
    assert {ref.name: ref.target_commit for ref in refs.branches} == {"main": pushed.oid, "dev/next": update.oid}
    assert {ref.name: ref.target_commit for ref in refs.tags} == {"v1": pushed.oid}
    api.delete_branch(REPO, branch="dev/next")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "notes.txt", revision="dev/next", force_download=True)


def test_dataset_repos_live_under_their_own_prefix(hub):
    api = HfApi()
    api.create_repo("tiny-data", repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data.csv", repo_id="tester/tiny-data", repo_type="dataset"
    )
    assert Path(hf_hub_download("tester/tiny-data", "data.csv", repo_type="dataset")).read_text() == "a,b\n1,2\n"
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/tiny-data", "data.csv")  # no such model


def test_offline_child_process_loads_from_cache(hub, pushed):
    cached = hf_hub_download(REPO, "model.safetensors")
    code = textwrap.dedent(
        f"""
        from huggingface_hub import constants, hf_hub_download
        assert constants.HF_HUB_OFFLINE
        print(hf_hub_download({REPO!r}, "model.safetensors"))
        """
    )
    hub.stop()  # offline must not need the server
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == cached


def test_missing_repo_revision_and_file_raise_their_errors(hub, pushed):
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/missing", "notes.txt")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("tester/missing")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "notes.txt", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="no-such-branch")
    with pytest.raises(RemoteEntryNotFoundError) as error:
        hf_hub_download(REPO, "missing.txt")
    assert isinstance(error.value, EntryNotFoundError)


def test_server_down_before_download_raises_a_connection_error(hub, pushed, monkeypatch):
    hub.stop()
    with pytest.raises(LocalEntryNotFoundError) as error:
        snapshot_download(REPO)
    assert isinstance(error.value.__cause__, httpx2.ConnectError)
    # hf_hub_download of an uncached file retries its HEAD with backoff (1+2+4+8+8 s) before giving up: skip the waits
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda seconds: None)
    with pytest.raises(LocalEntryNotFoundError) as error:
        hf_hub_download(REPO, "notes.txt")
    assert isinstance(error.value.__cause__, httpx2.ConnectError)


def test_stop_cuts_a_download_in_flight(hub):
    big = os.urandom(16 << 20)  # more than the socket buffers hold, so the server is still sending when it stops
    HfApi().create_repo("big")
    HfApi().upload_file(path_or_fileobj=big, path_in_repo="big.bin", repo_id="tester/big")
    with httpx2.stream("GET", f"{hub.endpoint}/tester/big/resolve/main/big.bin") as response:
        chunks = response.iter_bytes()
        received = len(next(chunks))
        hub.stop()
        with pytest.raises((httpx2.RemoteProtocolError, httpx2.ReadError)):
            for chunk in chunks:
                received += len(chunk)
    assert received < len(big)
