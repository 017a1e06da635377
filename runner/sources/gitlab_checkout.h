/* Host-side checkout of a GitLab job's commit (`clone = host`).
 *
 * agentlabd runs git itself, with the job token, on the loop (uv_spawn; no
 * blocking): `git init`, `git fetch` of the job's refspecs at its depth,
 * `git checkout -f SHA`; then, on a worker thread, the tree (with .git) is
 * packed into a tar for engine_submit's workdir_tar and the tree removed.
 * The VM gets the sources without ever seeing the job token or needing a
 * network.
 *
 * The GIT_* variables (gitlab_git.h) add, as gitlab-runner does: the
 * fetch flags and depth; `git clean` after the checkout; `git submodule
 * update --init` (relative submodule URLs resolve against the repository
 * URL); `git lfs pull` in the repository, when its .gitattributes ask for
 * filter=lfs, and in its submodules; or no checkout at all.
 *
 * The token reaches git (and git-lfs) as an HTTP Authorization header
 * through git's GIT_CONFIG_* environment, for URLs of the repository's
 * host only (http.<scheme://host/>.extraHeader), never in argv, in
 * .git/config or on disk; the remote URLs git records have no
 * credentials. git may use only http and https (GIT_ALLOW_PROTOCOL), reads
 * no system or global config, and never prompts. Loop thread only.
 */
#ifndef AL_GITLAB_CHECKOUT_H
#define AL_GITLAB_CHECKOUT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "runner/base/error.h"
#include "runner/sources/gitlab_git.h"

struct gitlab_checkout;

struct gitlab_checkout_params {
    const char *dir;             /* private dir, created 0700: dir/src, then dir/workdir.tar */
    const char *repo_url;        /* http(s); user info in it is dropped */
    const char *token;           /* the job token */
    const char *sha;             /* 40 (sha1) or 64 (sha256) hex digits */
    const char *const *refspecs; /* NULL-terminated; none = fetch the sha itself */
    int depth;                   /* 0 = full history */
    uint64_t max_bytes;          /* cap of the tar; 0 = unlimited */
    /* NULL-terminated zip files (artifacts of earlier jobs of the pipeline)
     * unpacked over the checked-out tree before it is packed; may be NULL */
    const char *const *unpack_zips;
    /* writes the checked-out files, before the zips are unpacked, as
     * GITLAB_TRACKED_LIST (gitlab_job.h) into the tree */
    bool list_tracked;
    int64_t timeout_s;                 /* the whole checkout; 0 = 10 minutes */
    const struct gitlab_git_opts *git; /* the job's GIT_* variables; NULL = none set */
    /* called with a line for the job's trace ("Updating/initializing
     * submodules...\n") as steps the variables ask for start; may be NULL */
    void (*note)(const char *line, void *data);
};

/* result 0: tar_path is the packed work dir (the caller owns the file).
 * Otherwise a negative errno (-ECANCELED after gitlab_checkout_cancel,
 * -ETIMEDOUT) and message says what failed, with git's last words
 * (redacted). The checkout is freed after the callback returns. */
typedef void (*gitlab_checkout_cb)(int result, const char *tar_path, const char *message,
                                   void *data);

/* Starts the checkout. On error nothing runs and cb will not be called. */
int gitlab_checkout_start(uv_loop_t *loop, const struct gitlab_checkout_params *p,
                          gitlab_checkout_cb cb, void *data, struct gitlab_checkout **ret,
                          struct al_error **err);

/* Stops git (SIGKILL to its process group); cb follows with -ECANCELED
 * (after a packing step already under way has finished). */
void gitlab_checkout_cancel(struct gitlab_checkout *c);

/* Standard base64 of data[0..len) as a new string, or NULL. */
char *gitlab_base64(const void *data, size_t len);

#endif
