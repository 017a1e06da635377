#!/usr/bin/env python3
"""Git repositories for the GitLab checkout tests, and a server for them.

make_sub_lfs_repos() builds bare repositories with a submodule under a
relative URL and a Git LFS file (gitlab_test.py uses it). Run as a program
it builds them under DIR/git, serves them with the fake GitLab (git smart
HTTP through git http-backend, the Git LFS batch API, the job token checked
on every request; see gitlab_fake.py) on 127.0.0.1 and writes
"URL SHA GONE_SHA SSH_SHA" to DIR/info: super.git at SHA (its LFS object
is served), lfsgone.git at GONE_SHA (its LFS object is not), sshsub.git at
SSH_SHA (its submodule URL is git@127.0.0.1:git/lib.git). On SIGTERM it
writes what it saw to DIR/status as JSON and exits:
  gitlab_git_repos.py DIR TOKEN
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

LFS_CONTENT = b"large file content held by Git LFS\n" * 64
SUB_CONTENT = b"a file of the submodule\n"


def git(*args, cwd=None):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.test",
                            GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.test",
                            GIT_CONFIG_NOSYSTEM="1", HOME=cwd or "/tmp"))


def make_sub_lfs_repos(root, name="super", lfs_content=LFS_CONTENT, sub_url="../lib.git"):
    """Bare repos at root/lib.git and root/NAME.git: NAME has two commits,
    the submodule lib under sub_url (a URL relative to NAME's) and data/blob.bin
    tracked by Git LFS (a pointer to lfs_content in the repository). Returns
    (NAME's sha, the LFS object's oid)."""
    lib = os.path.join(root, "lib-work")
    if not os.path.isdir(lib):
        os.makedirs(lib)
        git("init", "-q", "-b", "main", ".", cwd=lib)
        with open(os.path.join(lib, "sub.txt"), "wb") as f:
            f.write(SUB_CONTENT)
        git("add", ".", cwd=lib)
        git("commit", "-q", "-m", "lib", cwd=lib)
        git("clone", "-q", "--bare", lib, os.path.join(root, "lib.git"), cwd=root)
    lib_sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=lib, capture_output=True,
                             text=True, check=True).stdout.strip()
    work = os.path.join(root, name + "-work")
    os.makedirs(os.path.join(work, "data"))
    git("init", "-q", "-b", "main", ".", cwd=work)
    with open(os.path.join(work, "README.txt"), "w") as f:
        f.write("first\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    oid = hashlib.sha256(lfs_content).hexdigest()
    with open(os.path.join(work, "data", "blob.bin"), "w") as f:
        f.write(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\n"
                f"size {len(lfs_content)}\n")
    with open(os.path.join(work, ".gitattributes"), "w") as f:
        f.write("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    with open(os.path.join(work, ".gitmodules"), "w") as f:
        f.write(f'[submodule "lib"]\n\tpath = lib\n\turl = {sub_url}\n')
    git("add", ".", cwd=work)
    git("update-index", "--add", "--cacheinfo", f"160000,{lib_sha},lib", cwd=work)
    git("commit", "-q", "-m", "submodule and LFS file", cwd=work)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True,
                         check=True).stdout.strip()
    bare = os.path.join(root, name + ".git")
    git("clone", "-q", "--bare", work, bare, cwd=root)
    git("update-ref", "refs/pipelines/7", sha, cwd=bare)
    return sha, oid



def main():
    top, token = sys.argv[1], sys.argv[2]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gitlab_fake import FakeGitLab, make_job
    root = os.path.join(top, "git")
    os.makedirs(root)
    sha, oid = make_sub_lfs_repos(root)
    gone_sha, _ = make_sub_lfs_repos(root, "lfsgone", b"an object nobody uploaded\n")
    ssh_sha, _ = make_sub_lfs_repos(root, "sshsub", sub_url="git@127.0.0.1:git/lib.git")
    fake = FakeGitLab("glrt-unused", git_root=root).start()
    fake.lfs_objects[oid] = LFS_CONTENT
    job = fake.add_job(make_job(1, fake.url, sha, ["true"], project="super", token=token))
    job.status = "running"

    def stop(*_):
        with fake.lock:
            status = {"auth_failures": fake.git_auth_failures, "auth_paths": fake.git_auth_paths,
                      "lfs_downloads": fake.lfs_downloads, "errors": fake.errors}
        with open(os.path.join(top, "status.tmp"), "w") as f:
            json.dump(status, f)
        os.rename(os.path.join(top, "status.tmp"), os.path.join(top, "status"))
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    with open(os.path.join(top, "info.tmp"), "w") as f:
        f.write(f"{fake.url} {sha} {gone_sha} {ssh_sha}\n")
    os.rename(os.path.join(top, "info.tmp"), os.path.join(top, "info"))
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
