/* A GitLab CI job as the runner API hands it out, and the agentlab job spec
 * made from it.
 *
 * gitlab_job_parse() is the one place where the body of a 201 answer to
 * POST /api/v4/jobs/request is read. Before yajl builds a tree the bytes are
 * pre-scanned, so the document size, the nesting depth and the number of
 * values are bounded before any memory is spent on them; the tree walk then
 * checks every field this runner uses for type, length, count and syntax.
 * Unknown fields are ignored (GitLab adds fields over time). Errors name
 * the field path, e.g. `steps[0].script[2]: expected a string, got a number`,
 * and never echo the job token or a variable's value.
 *
 * gitlab_job_to_spec() turns a parsed job into a job spec: the shell script
 * that runs the steps, the variables (masked ones as secret_env, file
 * variables written to files by the script), the declared artifact paths
 * the timeout, and the VM's image and size. See README.md ("GitLab runner") for what the guest
 * sees.
 */
#ifndef AL_GITLAB_JOB_H
#define AL_GITLAB_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runner/base/error.h"
#include "runner/engine/spec.h"
#include "runner/sources/gitlab_git.h"

/* Limits of a job payload. */
#define GITLAB_JOB_MAX_BYTES        (2u << 20) /* whole document */
#define GITLAB_JOB_MAX_DEPTH        32         /* real payloads nest 5 levels */
#define GITLAB_JOB_MAX_VALUES       200000     /* JSON values in the document */
#define GITLAB_JOB_MAX_STRING       (64u << 10)
#define GITLAB_JOB_MAX_TOKEN        1024
#define GITLAB_JOB_MAX_URL          2048
#define GITLAB_JOB_MAX_REF          1024
#define GITLAB_JOB_MAX_REFSPECS     32
#define GITLAB_JOB_MAX_VARIABLES    2000
#define GITLAB_JOB_MAX_KEY          255
#define GITLAB_JOB_MAX_STEPS        16
#define GITLAB_JOB_MAX_LINES        10000 /* script lines per step */
#define GITLAB_JOB_MAX_ARTIFACTS    16
#define GITLAB_JOB_MAX_DEPENDENCIES 100 /* jobs whose artifacts a job needs */
#define GITLAB_JOB_MAX_CACHES       4   /* GitLab allows 4 caches a job */
#define GITLAB_JOB_MAX_CACHE_KEY    255 /* GitLab caps keys the same way */
#define GITLAB_JOB_MAX_PATHS        100 /* paths (and excludes) per artifact entry */
#define GITLAB_JOB_MAX_NAME         255
#define GITLAB_JOB_MAX_DEPTH_GIT    1000000
/* features.token_mask_prefixes: entries accepted in a payload, and how many
 * are used (gitlab-runner's limit; the rest are ignored, as it does) */
#define GITLAB_JOB_MAX_MASK_PREFIXES_SENT 64
#define GITLAB_JOB_MASK_PREFIXES          15
/* the prefix gitlab-runner always masks (personal access tokens) */
#define GITLAB_DEFAULT_MASK_PREFIX "glpat-"

/* The longest after_script step, as gitlab-runner's default. */
#define GITLAB_AFTER_SCRIPT_TIMEOUT_S 300

enum gitlab_when {
    GITLAB_WHEN_ON_SUCCESS = 0,
    GITLAB_WHEN_ON_FAILURE,
    GITLAB_WHEN_ALWAYS,
};

struct gitlab_variable {
    char *key;
    char *value; /* wiped when the job is freed; expanded unless raw */
    bool masked;
    bool file;
    bool raw; /* not expanded */
};

struct gitlab_step {
    char *name;    /* "script", "after_script", "release", ... */
    char **script; /* NULL-terminated, never NULL */
    size_t n_script;
    int64_t timeout_s; /* 0 = not given */
    enum gitlab_when when;
    bool allow_failure;
};

struct gitlab_artifact {
    char *name;   /* may be NULL */
    char **paths; /* NULL-terminated, never NULL */
    size_t n_paths;
    char **exclude; /* NULL-terminated, never NULL */
    size_t n_exclude;
    bool untracked;
    enum gitlab_when when;
    char *type;      /* artifact_type, "archive" when not given */
    char *format;    /* artifact_format, "zip" when not given */
    char *expire_in; /* may be NULL */
};

enum gitlab_cache_policy {
    GITLAB_CACHE_PULL_PUSH = 0, /* restore before, save after */
    GITLAB_CACHE_PULL,          /* restore only */
    GITLAB_CACHE_PUSH,          /* save only */
};

/* One entry of `cache:`. GitLab has already appended "-protected" or
 * "-non_protected" to key and fallback_keys unless the project shares its
 * caches (or the entry says `unprotect: true`). */
struct gitlab_cache_spec {
    char *key;    /* as sent; "default" when GitLab sent none */
    char **paths; /* NULL-terminated, or NULL when none */
    size_t n_paths;
    char **fallback_keys; /* NULL-terminated, or NULL when none */
    size_t n_fallback_keys;
    bool untracked;
    enum gitlab_cache_policy policy;
    enum gitlab_when when;
};

/* An earlier job of the pipeline whose artifacts this one needs
 * (`dependencies:`/`needs:`): GET /api/v4/jobs/ID/artifacts with the token,
 * unpacked into the build dir before the script. */
struct gitlab_dependency {
    int64_t id;
    char *name;           /* may be NULL */
    char *token;          /* may be NULL (then the job's own); wiped when freed */
    char *artifacts_file; /* artifacts_file.filename; NULL: it has no artifacts */
    int64_t artifacts_size;
};

struct gitlab_job {
    int64_t id;
    char *token;        /* the job token: wiped when the job is freed */
    char *job_name;     /* job_info.name, or NULL */
    char *project_name; /* job_info.project_name, or NULL */
    int64_t project_id; /* job_info.project_id; 0 = not given */
    /* git_info */
    char *repo_url; /* as sent: it carries the job token as user info */
    char *ref;
    char *sha;       /* 40 or 64 lower-case hex digits */
    char **refspecs; /* NULL-terminated, never NULL */
    size_t n_refspecs;
    int depth;         /* 0 = full history */
    int64_t timeout_s; /* runner_info.timeout; 0 = not given */
    struct gitlab_variable *variables;
    size_t n_variables;
    struct gitlab_step *steps;
    size_t n_steps;
    struct gitlab_artifact *artifacts;
    size_t n_artifacts;
    struct gitlab_dependency *dependencies;
    size_t n_dependencies;
    struct gitlab_cache_spec *caches;
    size_t n_caches;
    char *image; /* image.name, or NULL: the VM image (see gitlab_job_to_spec) */
    /* features.failure_reasons: what the server understands; NULL when the
     * server did not say (then every documented reason is assumed). */
    char **failure_reasons;
    size_t n_failure_reasons;
    /* the token prefixes to mask in the job's output: those of
     * features.token_mask_prefixes (each 3 to 64 printable characters
     * without spaces, else the payload is refused) and
     * GITLAB_DEFAULT_MASK_PREFIX, without duplicates, at most
     * GITLAB_JOB_MASK_PREFIXES. NULL-terminated, never NULL. */
    char **mask_prefixes;
    size_t n_mask_prefixes;
    /* the GIT_* variables of the host-side checkout (gitlab_git.h) */
    struct gitlab_git_opts git;
};

/* The most an expanded string may grow to, and all expanded variable
 * values of a job together (a value naming a long one many times). */
#define GITLAB_EXPAND_MAX       GITLAB_JOB_MAX_STRING
#define GITLAB_EXPAND_MAX_TOTAL (4u << 20)
/* "$" in the strings a job expands: each reference scans the variables */
#define GITLAB_EXPAND_MAX_REFS 65536

/* Expands $NAME and ${NAME} in s against vars[0..n) as gitlab-runner's
 * JobVariables.ExpandValue (Go's os.Expand) does: the last variable with
 * that key; "$$" and "${$}" give "$"; unknown names, shell special
 * parameters ($1, $*, $#, $@, $!, $?, $-) and ${...} with anything but a
 * name expand to nothing; a "$" followed by nothing or by a character that
 * starts no name stays; "${}" and an unclosed "${" are dropped. One pass:
 * what a value brings in is not expanded again, so expansion always ends.
 * A file variable expands to nothing (its file exists only in the guest).
 * *ret is new; -E2BIG when the result would be longer than max, -ENOMEM. */
int gitlab_expand(const char *s, const struct gitlab_variable *vars, size_t n, size_t max,
                  char **ret);

/* Expands, in a parsed job, what gitlab-runner expands: every variable
 * value but the raw ones, each against the values as sent (its
 * JobVariables.Expand), then against those: the artifacts' name, paths
 * and exclude, and the caches' key, paths and fallback keys. A name that
 * expands to nothing becomes "default" (gitlab-runner's uploader). Fails
 * (-EINVAL, message naming the field) when the strings hold more than
 * GITLAB_EXPAND_MAX_REFS "$", a value would exceed GITLAB_EXPAND_MAX, all
 * values GITLAB_EXPAND_MAX_TOTAL, or a path or key JOB_SPEC_MAX_PATH or
 * would hold control characters. gitlab_job_parse()
 * calls it. */
int gitlab_job_expand(struct gitlab_job *job, struct al_error **err);

/* Parses and validates a job payload, its GIT_* variables included
 * (gitlab_git.h, after expansion). data need not be NUL-terminated.
 * On success *ret_job is a new job the caller frees with gitlab_job_free().
 * Errors: -E2BIG (document too large), -EINVAL (the message names the
 * field), -ENOMEM. */
int gitlab_job_parse(const char *data, size_t len, struct gitlab_job **ret_job,
                     struct al_error **err);

/* Reads only "id" and "token" from a payload that gitlab_job_parse()
 * refused, so the job can still be reported failed. Returns 0 when both
 * are present and valid, else -EINVAL. *ret_token is new (wipe it). */
int gitlab_job_parse_ident(const char *data, size_t len, int64_t *ret_id, char **ret_token);

/* Frees a job, wiping the token and every variable value first. Accepts
 * NULL; returns NULL. */
struct gitlab_job *gitlab_job_free(struct gitlab_job *job);
DEFINE_CLEANUP_FUNC(struct gitlab_job, gitlab_job_free)
#define _cleanup_gitlab_job_ _cleanup_(gitlab_job_freep)

enum gitlab_clone {
    GITLAB_CLONE_HOST = 0, /* agentlabd fetches the commit; the work dir tar carries it */
    GITLAB_CLONE_GUEST,    /* the guest fetches it (needs a network); gets the job token */
    GITLAB_CLONE_NONE,     /* no checkout (also GIT_STRATEGY=none) */
};

struct gitlab_spec_opts {
    enum gitlab_clone clone;
    const char *pool;  /* NULL = the agent's default pool */
    const char *image; /* NULL = the pool's or agent's default image */
};

/* The checkout mode for a job: GIT_STRATEGY=none turns any mode into
 * GITLAB_CLONE_NONE. */
enum gitlab_clone gitlab_job_clone_mode(const struct gitlab_job *job, enum gitlab_clone configured);

/* The variables that size a job's VM (job_size.h). */
#define GITLAB_VAR_CPUS   "AGENTLAB_CPUS"
#define GITLAB_VAR_MEMORY "AGENTLAB_MEMORY"

/* Builds the job spec. image: (image_name_is_valid(), else refused) names
 * the VM image instead of opts->image; the variables GITLAB_VAR_CPUS and
 * GITLAB_VAR_MEMORY set resources.cpus and .memory_mb (refused when
 * malformed). Whether the pool allows them is the engine's decision.
 * Variables become env (masked ones secret_env); a
 * variable whose value holds the job token goes to the guest only with
 * GITLAB_CLONE_GUEST (as secret_env), never otherwise. Variables whose key
 * is no shell name are left out. Fails (-EINVAL, -E2BIG) with a message
 * for the job's log when the job cannot be represented: a masked value too
 * short to mask, too many variables, a script over JOB_SPEC_MAX_SCRIPT. */
int gitlab_job_to_spec(const struct gitlab_job *job, const struct gitlab_spec_opts *opts,
                       struct job_spec **ret_spec, struct al_error **err);

/* The /bin/sh script that runs the steps in the guest (part of the spec). */
int gitlab_job_script(const struct gitlab_job *job, enum gitlab_clone clone, char **ret_script,
                      struct al_error **err);

/* `untracked: true` artifacts and caches. At the end of the script (after
 * after_script) the guest copies the files git does not track into
 * GITLAB_UNTRACKED_DIR of the work dir, which it hands back with the other
 * artifacts: the files `git ls-files -o` lists when git runs there (as
 * gitlab-runner's archiver asks git), else every file but .git and those
 * in GITLAB_TRACKED_LIST, the list of the checkout's files the host writes
 * (clone = host; one "./path" a line, for GNU tar's -X). */
#define GITLAB_UNTRACKED_DIR ".agentlab-untracked"
#define GITLAB_TRACKED_LIST  ".git/agentlab-tracked"

/* Whether any artifact entry of the job, or a cache it may save, asks for
 * untracked files. */
bool gitlab_job_wants_untracked(const struct gitlab_job *job);

/* The name under which the file rel (a path under the guest's artifacts:
 * the work dir's, or GITLAB_UNTRACKED_DIR's copies) goes into a's archive,
 * or NULL when it does not belong there: a work dir path a wants
 * (gitlab_artifact_wants()) as itself; an untracked copy, when a asks for
 * untracked files, as the path it has in the work dir unless an exclude
 * pattern matches it or a's paths already bring it in. The result points
 * into rel. */
const char *gitlab_artifact_member(const struct gitlab_artifact *a, const char *rel);

/* The archive artifact entry (artifact_type "archive") or NULL. */
const struct gitlab_artifact *gitlab_job_archive(const struct gitlab_job *job);

/* Whether the cache entry is saved after a job that succeeded (or not):
 * its policy pushes and its `when` applies. */
bool gitlab_cache_saves(const struct gitlab_cache_spec *c, bool succeeded);

/* The directories and files the guest must hand back for the archive's
 * patterns: each pattern cut at its first component with a glob character
 * (`build/` + `*.bin` gives "build", `*.log` gives "."). NULL-terminated, NULL when
 * there is nothing to collect. Absolute patterns and ".." are left out. */
int gitlab_artifact_roots(const struct gitlab_artifact *a, char ***ret_roots,
                          struct al_error **err);

/* True when path (relative, '/'-separated, no leading "./") belongs in the
 * archive: it or one of its parent directories matches one of the
 * patterns, and none matches an exclude pattern. "**" matches across
 * directories. */
bool gitlab_artifact_wants(const struct gitlab_artifact *a, const char *path);

/* Whether a step or artifact with `when` applies after a job that
 * succeeded (or not). */
bool gitlab_when_applies(enum gitlab_when when, bool succeeded);

/* Copies an http(s) URL without its user info ("https://u:p@h/x" ->
 * "https://h/x"). -EINVAL for anything but an http or https URL with a host. */
int gitlab_url_strip_credentials(const char *url, char **ret_url, struct al_error **err);

/* The value of variable key, or NULL. The last definition wins. */
const char *gitlab_job_variable(const struct gitlab_job *job, const char *key);

#endif
