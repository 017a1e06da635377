/* Who the workload runs as, and starting processes as that user.
 *
 * When the helper runs as root it switches every child (workload, tar) to
 * the job's user: supplementary groups, gid, uid, in that order, then
 * checks that root cannot be regained. When it is not root, children run as
 * the helper's own user and the job's USER is ignored.
 */
#ifndef AL_GUEST_SPAWN_H
#define AL_GUEST_SPAWN_H

#include <stdbool.h>
#include <sys/types.h>

#include "runner/base/error.h"

struct guest_user {
    bool drop; /* children switch to uid/gid/groups */
    uid_t uid;
    gid_t gid;
    gid_t *groups;
    int ngroups;
    char *name;
    char *home;
    char *shell;
};

/* Looks up `name` (when running as root) or the helper's own user (when
 * not). Returns 0, -ENOENT (no such user) or -ENOMEM. */
int guest_user_resolve(const char *name, struct guest_user *ret, struct al_error **err);

/* Frees the strings; accepts NULL. */
void guest_user_free(struct guest_user *u);

/* Called in the child after it switched user and directory, right before
 * exec. May rewrite *argv (pointing into memory it owns). Returns 0 to exec,
 * 1 to exit(0) without exec, or a negative errno to fail the spawn. */
typedef int (*guest_spawn_prepare_fn)(void *data, char ***argv);

struct guest_spawn_opts {
    const struct guest_user *user;
    const char *cwd;   /* chdir as the user; NULL = stay */
    char *const *argv; /* searched in PATH of envp */
    char *const *envp; /* the child's complete environment */
    int stdin_fd;      /* -1 = /dev/null */
    int stdout_fd;     /* -1 = /dev/null */
    int stderr_fd;     /* -1 = /dev/null */
    int fd3;           /* passed as fd 3, or -1 */
    bool new_pgroup;   /* child leads a new process group */
    guest_spawn_prepare_fn prepare;
    void *prepare_data;
};

/* Forks and execs. Returns 0 once the program is running, with its pid in
 * *ret_pid, or a negative errno when the child could not switch user,
 * change directory or exec (it has then been reaped); err says which step.
 * exec_failed (may be NULL) is set to true when only the final exec failed,
 * i.e. the program itself is missing or not executable. */
int guest_spawn(const struct guest_spawn_opts *o, pid_t *ret_pid, bool *exec_failed,
                struct al_error **err);

/* Creates dir and its missing parents. Parents get mode 0755; dir itself
 * 0750 and, when it is created now and the user is switched, that user as
 * owner. An existing dir is left as it is. Returns 0 or a negative errno. */
int guest_make_workdir(const char *dir, const struct guest_user *u, struct al_error **err);

#endif
