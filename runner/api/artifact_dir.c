#include "runner/api/artifact_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runner/base/util.h"

int api_artifact_dir_open(struct api_ctx *ctx, const char *job_id)
{
    _cleanup_free_ char *dir = engine_job_dir(ctx->engine, job_id);
    if (!dir)
        return -1;
    _cleanup_close_ int jfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (jfd < 0)
        return -1;
    return openat(jfd, "artifacts", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

struct walk {
    api_artifact_fn fn;
    void *data;
    size_t left;
    bool truncated;
    int rc;
};

static void walk_dir(struct walk *w, int dfd, const char *prefix, int depth)
{
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return;
    }
    struct dirent *de;
    while ((de = readdir(d)) && !w->rc) {
        if (streq(de->d_name, ".") || streq(de->d_name, ".."))
            continue;
        if (!w->left) {
            w->truncated = true;
            break;
        }
        char path[ROUTE_MAX_ARTIFACT_PATH + 1];
        int n = snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "/" : "", de->d_name);
        if (n < 0 || (size_t)n >= sizeof(path))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth + 1 >= ROUTE_MAX_ARTIFACT_DEPTH)
                continue;
            int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0)
                walk_dir(w, sub, path, depth + 1);
        } else if (S_ISREG(st.st_mode)) {
            w->left--;
            w->rc = w->fn(w->data, path, &st);
        }
    }
    closedir(d);
}

int api_artifact_dir_walk(int dfd, size_t max, api_artifact_fn fn, void *data, bool *ret_truncated)
{
    struct walk w = {.fn = fn, .data = data, .left = max};
    walk_dir(&w, dfd, "", 0);
    if (ret_truncated)
        *ret_truncated = w.truncated;
    return w.rc;
}
