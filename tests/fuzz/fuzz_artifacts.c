/* The host-side extraction of the artifact tar a guest sends
 * (provision/artifacts.c): arbitrary bytes as the tarball, unpacked into a
 * fresh directory that has a file beside it. Whatever the archive holds,
 * only regular files and directories appear, below the destination, with no
 * setuid/setgid/sticky bit and nothing writable by group or others, within
 * the limits, and the file beside it is untouched. */
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "provision/artifacts.h"
#include "runner/base/util.h"

#define MAX_FILES 64
#define MAX_BYTES (256 * 1024)
#define VICTIM    "do not touch"

static char root[256];

static uint64_t seen_entries;
static int check_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)path;
    if (ftw->level == 0)
        return 0;
    seen_entries++;
    if (type == FTW_SL || type == FTW_SLN || (!S_ISREG(st->st_mode) && !S_ISDIR(st->st_mode)))
        abort(); /* a symlink, device, FIFO or socket was created */
    if (st->st_mode & (S_ISUID | S_ISGID | S_ISVTX | S_IWGRP | S_IWOTH))
        abort();
    if (S_ISREG(st->st_mode) && st->st_nlink != 1)
        abort(); /* a hard link */
    return 0;
}

static void check_victim(void)
{
    char path[300], buf[64] = "";
    snprintf(path, sizeof(path), "%s/victim", root);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        abort();
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n != (ssize_t)strlen(VICTIM) || memcmp(buf, VICTIM, strlen(VICTIM)) != 0)
        abort();
    /* nothing new beside the destination */
    snprintf(path, sizeof(path), "%s/out", root);
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISDIR(st.st_mode))
        abort();
}

static void remove_root(void)
{
    (void)al_rm_rf(root, NULL);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(root, sizeof(root), "%s/fuzz-artifacts-XXXXXX", base);
    if (!mkdtemp(root))
        abort();
    atexit(remove_root);
    char path[300];
    snprintf(path, sizeof(path), "%s/victim", root);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, VICTIM, strlen(VICTIM)) != (ssize_t)strlen(VICTIM))
        abort();
    close(fd);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char tar[300], dest[300];
    snprintf(tar, sizeof(tar), "%s/in.tar", root);
    snprintf(dest, sizeof(dest), "%s/out", root);
    int fd = open(tar, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size))
        abort();
    close(fd);

    struct artifact_limits lim = {.max_bytes = MAX_BYTES, .max_files = MAX_FILES};
    struct artifact_summary s = {0};
    struct al_error *err = NULL;
    (void)artifacts_extract(tar, dest, &lim, &s, &err);
    al_error_free(err);

    if (s.bytes > MAX_BYTES || s.files + s.dirs > MAX_FILES)
        abort();
    seen_entries = 0;
    if (nftw(dest, check_entry, 16, FTW_PHYS) != 0)
        abort();
    if (seen_entries > MAX_FILES)
        abort();
    check_victim();

    err = NULL;
    if (al_rm_rf(dest, &err) < 0)
        abort();
    return 0;
}
