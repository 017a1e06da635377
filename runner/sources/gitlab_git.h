/* The GIT_* variables of a GitLab job that steer the host-side checkout
 * (`clone = host`), parsed once, when the job payload is (gitlab_job.c).
 *
 * Names, defaults and meanings are gitlab-runner's:
 *   GIT_DEPTH                   the fetch depth (0 = full history); GitLab
 *                               also sends it as git_info.depth
 *   GIT_CHECKOUT                false: fetch only, the work dir holds .git
 *                               and no files (default true)
 *   GIT_CLEAN_FLAGS             flags of `git clean` after the checkout
 *                               (default -ffdx; "none" skips it)
 *   GIT_FETCH_EXTRA_FLAGS       flags added to `git fetch` (default
 *                               --prune --quiet; "none" adds none)
 *   GIT_SUBMODULE_STRATEGY      none | normal | recursive (default none)
 *   GIT_SUBMODULE_PATHS         pathspecs limiting the submodules updated
 *   GIT_SUBMODULE_UPDATE_FLAGS  flags added to `git submodule update`
 *   GIT_SUBMODULE_DEPTH         depth of the submodules' fetch (default
 *                               the GIT_DEPTH in effect; 0 = full)
 *   GIT_SUBMODULE_FORCE_HTTPS   true: ssh URLs of the GitLab host are
 *                               fetched over the repository URL's scheme
 *   GIT_LFS_SKIP_SMUDGE         true: LFS files stay pointers
 *
 * Flags are split on white space, as gitlab-runner does. Since they end up
 * in git's argument list on the host, only words that are options of the
 * command (long or short, from a fixed list per command; see
 * gitlab_git_flag_allowed()) pass: anything else, an option that reads
 * host files (--reference, --upload-pack, ...) or a word that is not an
 * option at all, refuses the job with a message naming the variable. */
#ifndef AL_GITLAB_GIT_H
#define AL_GITLAB_GIT_H

#include <stdbool.h>
#include <stddef.h>

#include "runner/base/error.h"

#define GITLAB_GIT_MAX_VALUE 4096 /* bytes of one GIT_* value */
#define GITLAB_GIT_MAX_WORDS 64   /* flags or paths in one value */

enum gitlab_submodule_strategy {
    GITLAB_SUBMODULES_NONE = 0,
    GITLAB_SUBMODULES_NORMAL,
    GITLAB_SUBMODULES_RECURSIVE,
};

/* Which git command a list of flags goes to. */
enum gitlab_git_command {
    GITLAB_GIT_FETCH = 0,
    GITLAB_GIT_CLEAN,
    GITLAB_GIT_SUBMODULE_UPDATE,
};

/* All zero is "nothing set, no flags" (a job not made by the parser). */
struct gitlab_git_opts {
    bool depth_set; /* GIT_DEPTH given (else git_info.depth applies) */
    int depth;
    bool no_checkout;     /* GIT_CHECKOUT=false */
    bool lfs_skip_smudge; /* GIT_LFS_SKIP_SMUDGE=true */
    /* NULL-terminated; NULL or empty = none */
    char **clean_flags;
    char **fetch_flags;
    enum gitlab_submodule_strategy submodules;
    char **submodule_paths;
    char **submodule_update_flags;
    bool submodule_depth_set; /* GIT_SUBMODULE_DEPTH given */
    int submodule_depth;
    bool submodule_force_https;
};

/* Looks a variable up: the last definition of key among a job's
 * variables, or NULL. */
typedef const char *(*gitlab_git_lookup_fn)(const void *vars, const char *key);

/* Fills *ret from the variables lookup(vars, KEY) gives. Unset variables
 * take their defaults; an empty value counts as unset (as in
 * gitlab-runner). -EINVAL with a message naming the variable for a value
 * that is malformed, too long, or (flags) not allowed; -ENOMEM. On failure
 * *ret holds nothing to free. Free with gitlab_git_opts_clear(). */
int gitlab_git_opts_parse(gitlab_git_lookup_fn lookup, const void *vars,
                          struct gitlab_git_opts *ret, struct al_error **err);

/* Frees what opts holds and zeroes it. */
void gitlab_git_opts_clear(struct gitlab_git_opts *opts);

/* Whether word (one flag, as split) may be passed to cmd. */
bool gitlab_git_flag_allowed(enum gitlab_git_command cmd, const char *word);

/* The fetch depth in effect: GIT_DEPTH when set, else payload_depth. */
int gitlab_git_depth(const struct gitlab_git_opts *opts, int payload_depth);

/* The submodules' fetch depth in effect (0 = full). */
int gitlab_git_submodule_depth(const struct gitlab_git_opts *opts, int payload_depth);

#endif
