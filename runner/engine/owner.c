#include "runner/engine/owner.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "runner/base/util.h"

#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"

static int read_trimmed(const char *path, size_t max, char **ret, struct al_error **err)
{
    char *s = NULL;
    size_t len = 0;
    int r = al_read_file(path, max, &s, &len, err);
    if (r < 0)
        return r;
    while (len && (s[len - 1] == '\n' || s[len - 1] == ' '))
        s[--len] = '\0';
    *ret = s;
    return 0;
}

int owner_id_for_state_dir(const char *state_dir, char **ret, struct al_error **err)
{
    _cleanup_free_ char *path = al_path_join(state_dir, "owner-id");
    if (!path)
        return al_error_set(err, ENOMEM, "owner id");
    char *id = NULL;
    struct al_error *rerr = NULL;
    int r = read_trimmed(path, 256, &id, &rerr);
    if (r == 0 && strncmp(id, "daemon:", 7) == 0 && strlen(id) == 7 + 32) {
        *ret = id;
        return 0;
    }
    free(id);
    al_error_free(rerr);
    if (r < 0 && r != -ENOENT)
        return al_error_set(err, -r, "reading %s", path);

    _cleanup_free_ char *hex = al_random_hex(16);
    if (!hex)
        return al_error_set(err, EIO, "generating an owner id");
    char *fresh = NULL;
    if (asprintf(&fresh, "daemon:%s", hex) < 0)
        return al_error_set(err, ENOMEM, "owner id");
    _cleanup_free_ char *line = NULL;
    if (asprintf(&line, "%s\n", fresh) < 0) {
        free(fresh);
        return al_error_set(err, ENOMEM, "owner id");
    }
    r = al_write_file_atomic(path, line, strlen(line), 0644, err);
    if (r < 0) {
        free(fresh);
        return r;
    }
    *ret = fresh;
    return 0;
}

/* Field 22 of /proc/PID/stat: start time in clock ticks since boot. */
static int process_start_time(pid_t pid, uint64_t *ret)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    _cleanup_free_ char *s = NULL;
    struct al_error *err = NULL;
    int r = al_read_file(path, 4096, &s, NULL, &err);
    al_error_free(err);
    if (r < 0)
        return r;
    /* the command name may contain spaces and parens: skip past the last ')' */
    char *p = strrchr(s, ')');
    if (!p)
        return -EINVAL;
    p++;
    for (int field = 3; field < 22; field++) {
        p = strchr(p + 1, ' ');
        if (!p)
            return -EINVAL;
    }
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(p + 1, &end, 10);
    if (errno || end == p + 1)
        return -EINVAL;
    *ret = v;
    return 0;
}

int owner_id_for_process(char **ret, struct al_error **err)
{
    _cleanup_free_ char *boot = NULL;
    int r = read_trimmed(BOOT_ID_PATH, 128, &boot, err);
    if (r < 0)
        return r;
    uint64_t start = 0;
    r = process_start_time(getpid(), &start);
    if (r < 0)
        return al_error_set(err, -r, "reading this process's start time");
    if (asprintf(ret, "run:%s:%d:%" PRIu64, boot, (int)getpid(), start) < 0)
        return al_error_set(err, ENOMEM, "owner id");
    return 0;
}

bool owner_is_dead_run(const char *owner)
{
    if (!owner || strncmp(owner, "run:", 4) != 0)
        return false;
    char boot[64];
    int pid = 0;
    uint64_t start = 0;
    if (sscanf(owner + 4, "%63[^:]:%d:%" SCNu64, boot, &pid, &start) != 3 || pid <= 0)
        return false;
    _cleanup_free_ char *cur = NULL;
    struct al_error *err = NULL;
    int r = read_trimmed(BOOT_ID_PATH, 128, &cur, &err);
    al_error_free(err);
    if (r < 0)
        return false;
    if (!streq(cur, boot))
        return true; /* the machine rebooted since */
    uint64_t now_start = 0;
    if (process_start_time(pid, &now_start) < 0)
        return true; /* no such process */
    return now_start != start;
}

int owner_lock_state_dir(const char *state_dir, int *ret_fd, struct al_error **err)
{
    _cleanup_free_ char *path = al_path_join(state_dir, "agentlabd.lock");
    if (!path)
        return al_error_set(err, ENOMEM, "lock path");
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return al_error_set_errno(err, errno, "opening %s", path);
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK)
            return al_error_set(err, EBUSY,
                                "another agentlabd (or agentlab gc) is using state dir %s",
                                state_dir);
        return al_error_set_errno(err, e, "locking %s", path);
    }
    *ret_fd = fd;
    return 0;
}
