#include "runner/sources/gitlab_checkout.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/log.h"
#include "runner/base/macro.h"
#include "runner/base/util.h"
#include "runner/loop/work.h"
#include "runner/sources/gitlab_job.h"
#include "provision/archive_walk.h"
#include "provision/artifacts.h"
#include "provision/workdir.h"

#define DEFAULT_TIMEOUT_S 600
#define STDERR_KEEP       2048
#define MAX_ARGS          (GITLAB_JOB_MAX_REFSPECS + 2 * GITLAB_GIT_MAX_WORDS + 24)
#define MAX_CONFIG        12 /* GIT_CONFIG_KEY_n entries */

enum step {
    STEP_INIT = 0,
    STEP_REMOTE,
    STEP_FETCH,
    STEP_CHECKOUT,
    STEP_LFS_DETECT,
    STEP_LFS_PULL,
    STEP_CLEAN,
    STEP_SUBMODULES,
    STEP_SUBMODULE_LFS,
    STEP_PACK,
    STEP_DONE,
};

static const char *const step_names[] = {
        "git init",
        "git remote add",
        "git fetch",
        "git checkout",
        "looking for Git LFS files",
        "git lfs pull (Git LFS objects could not be fetched)",
        "git clean",
        "git submodule update",
        "git lfs pull in the submodules (Git LFS objects could not be fetched)",
        "packing the work dir",
        "",
};

/* Run in each submodule: LFS objects only where its attributes ask. */
#define SUBMODULE_LFS_CMD "if git grep -q -e filter=lfs -- '*.gitattributes'; then git lfs pull; fi"

struct git_run;

struct gitlab_checkout {
    uv_loop_t *loop;
    char *dir;
    char *src;
    char *tar;
    char *url;         /* without credentials */
    char *url_base;    /* scheme://host[:port]/ of url */
    char *ssh_scp;     /* "git@HOST:", ssh spellings of url's host */
    char *ssh_url;     /* "ssh://git@HOST/" */
    char *auth_header; /* "Authorization: Basic ..." (wiped) */
    char *auth_b64;    /* registered with the redactor */
    char *sha;
    char **refspecs;
    char **unpack_zips;
    int depth;
    int submodule_depth;
    struct gitlab_git_opts git; /* a copy */
    bool lfs_installed;         /* git-lfs in PATH */
    bool has_lfs;               /* the checked-out tree asks for filter=lfs */
    void (*note)(const char *line, void *data);
    uint64_t max_bytes;
    bool list_tracked;
    enum step step;
    struct git_run *run; /* the git process of the current step */
    uv_timer_t timer;
    bool timer_closed;
    bool canceled;
    bool timed_out;
    int result;
    char message[1024];
    gitlab_checkout_cb cb;
    void *data;
};

/* One git process: embedded handles, freed when both are closed. */
struct git_run {
    struct gitlab_checkout *c;
    uv_process_t proc;
    uv_pipe_t err;
    int pending; /* exit and stderr EOF */
    int closing;
    int64_t status;
    int term_signal;
    char tail[STDERR_KEEP];
    size_t tail_len;
};

static int step_start(struct gitlab_checkout *c);

char *gitlab_base64(const void *data, size_t len)
{
    static const char alphabet[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *in = data;
    size_t out_len = 4 * ((len + 2) / 3);
    char *out = malloc(out_len + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = alphabet[(v >> 18) & 63];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? alphabet[v & 63] : '=';
    }
    out[o] = '\0';
    return out;
}

static void checkout_free(struct gitlab_checkout *c)
{
    if (c->auth_b64) {
        al_redact_remove(c->auth_b64);
        al_wipe_free(c->auth_b64);
    }
    al_wipe_free(c->auth_header);
    free(c->dir);
    free(c->src);
    free(c->tar);
    free(c->url);
    free(c->url_base);
    free(c->ssh_scp);
    free(c->ssh_url);
    free(c->sha);
    strv_free(c->refspecs);
    strv_free(c->unpack_zips);
    gitlab_git_opts_clear(&c->git);
    free(c);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct gitlab_checkout *c = h->data;
    checkout_free(c);
}

_printf_(3, 4) static void set_failure(struct gitlab_checkout *c, int code, const char *fmt, ...)
{
    if (c->result < 0)
        return;
    c->result = code;
    va_list ap;
    va_start(ap, fmt);
    _cleanup_free_ char *red = al_redact_vformat(NULL, fmt, ap);
    va_end(ap);
    snprintf(c->message, sizeof(c->message), "%s", red ? red : "checkout failed");
}

/* Reports the result once and frees the checkout. */
static void finish(struct gitlab_checkout *c)
{
    c->step = STEP_DONE;
    uv_timer_stop(&c->timer);
    if (c->canceled)
        set_failure(c, -ECANCELED, "checkout canceled");
    if (c->result < 0 && c->tar)
        unlink(c->tar);
    c->cb(c->result, c->result == 0 ? c->tar : NULL, c->message, c->data);
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}

/* ---- git processes ------------------------------------------------------- */

static void on_run_closed(uv_handle_t *h)
{
    struct git_run *g = h->data;
    if (--g->closing == 0)
        free(g);
}

static void kill_run(struct git_run *g)
{
    if (g && g->proc.pid > 0 && g->pending > 0)
        kill(-g->proc.pid, SIGKILL);
}

/* Last lines of git's stderr, one line, for the message. */
static void tail_text(const struct git_run *g, char *buf, size_t size)
{
    size_t n = g->tail_len;
    const char *s = g->tail;
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r'))
        n--;
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < size; i++)
        buf[o++] = s[i] == '\n' || s[i] == '\r' ? ' ' : (s[i] < 0x20 ? '?' : s[i]);
    buf[o] = '\0';
}

static void run_done(struct git_run *g)
{
    struct gitlab_checkout *c = g->c;
    c->run = NULL;
    g->closing = 2;
    uv_close((uv_handle_t *)&g->proc, on_run_closed);
    uv_close((uv_handle_t *)&g->err, on_run_closed);
    if (c->canceled) {
        set_failure(c, -ECANCELED, "checkout canceled");
    } else if (c->timed_out) {
        set_failure(c, -ETIMEDOUT, "%s timed out", step_names[c->step]);
    } else if (c->step == STEP_LFS_DETECT && !g->term_signal &&
               (g->status == 0 || g->status == 1)) {
        /* git grep: 0 found, 1 not found */
        c->has_lfs = g->status == 0;
        if (c->has_lfs && !c->lfs_installed)
            set_failure(c, -ENOENT,
                        "the repository stores files in Git LFS (filter=lfs in .gitattributes) "
                        "but git-lfs is not installed on the agentlab host: install it, or set "
                        "GIT_LFS_SKIP_SMUDGE=1 to get the pointer files");
    } else if (g->term_signal || g->status != 0) {
        char tail[STDERR_KEEP];
        tail_text(g, tail, sizeof(tail));
        if (g->term_signal)
            set_failure(c, -EIO, "%s was killed by signal %d: %s", step_names[c->step],
                        g->term_signal, tail);
        else
            set_failure(c, -EIO, "%s failed (exit %lld): %s", step_names[c->step],
                        (long long)g->status, tail);
    }
    if (c->result < 0) {
        finish(c);
        return;
    }
    c->step++;
    if (step_start(c) < 0)
        finish(c);
}

static bool strv_empty(char *const *v)
{
    return !v || !v[0];
}

/* Whether the current step has anything to do for this job. */
static bool step_wanted(const struct gitlab_checkout *c)
{
    bool checkout = !c->git.no_checkout;
    bool submodules = checkout && c->git.submodules != GITLAB_SUBMODULES_NONE;
    switch (c->step) {
    case STEP_CHECKOUT:
        return checkout;
    case STEP_LFS_DETECT:
        return checkout && !c->git.lfs_skip_smudge;
    case STEP_LFS_PULL:
        return c->has_lfs;
    case STEP_CLEAN:
        return checkout && !strv_empty(c->git.clean_flags);
    case STEP_SUBMODULES:
        return submodules;
    case STEP_SUBMODULE_LFS:
        return submodules && !c->git.lfs_skip_smudge;
    default:
        return true;
    }
}

static void note(struct gitlab_checkout *c, const char *line)
{
    if (c->note)
        c->note(line, c->data);
}

static void on_exit_cb(uv_process_t *p, int64_t status, int term_signal)
{
    struct git_run *g = p->data;
    g->status = status;
    g->term_signal = term_signal;
    if (--g->pending == 0)
        run_done(g);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    static char scratch[4096];
    (void)h;
    /* loop thread only: one read at a time */
    *buf = uv_buf_init(scratch, sizeof(scratch));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct git_run *g = s->data;
    if (n > 0) {
        size_t len = (size_t)n;
        if (len >= sizeof(g->tail)) {
            memcpy(g->tail, buf->base + len - sizeof(g->tail), sizeof(g->tail));
            g->tail_len = sizeof(g->tail);
        } else {
            size_t keep = g->tail_len + len > sizeof(g->tail) ? sizeof(g->tail) - len : g->tail_len;
            memmove(g->tail, g->tail + g->tail_len - keep, keep);
            memcpy(g->tail + keep, buf->base, len);
            g->tail_len = keep + len;
        }
        return;
    }
    if (n == 0)
        return;
    uv_read_stop(s);
    if (--g->pending == 0)
        run_done(g);
}

/* git's configuration, as GIT_CONFIG_KEY_n/VALUE_n pairs. */
static int config_pairs(struct gitlab_checkout *c, const char **keys, const char **values,
                        size_t *ret_n, char **ret_header_key, char **ret_force_key)
{
    size_t n = 0;
    /* the token only for the repository's own host (submodules, LFS) */
    if (asprintf(ret_header_key, "http.%s.extraHeader", c->url_base) < 0)
        return -ENOMEM;
    keys[n] = *ret_header_key, values[n++] = c->auth_header;
    keys[n] = "credential.helper", values[n++] = "";
    if (c->git.submodule_force_https) {
        /* gitlab-runner's GIT_SUBMODULE_FORCE_HTTPS: ssh URLs of this host
         * are fetched over the repository's own scheme */
        if (asprintf(ret_force_key, "url.%s.insteadOf", c->url_base) < 0)
            return -ENOMEM;
        keys[n] = *ret_force_key, values[n++] = c->ssh_scp;
        keys[n] = *ret_force_key, values[n++] = c->ssh_url;
    }
    if (c->step == STEP_LFS_PULL || c->step == STEP_SUBMODULE_LFS) {
        /* what `git lfs install` would write into a global config */
        keys[n] = "filter.lfs.process", values[n++] = "git-lfs filter-process";
        keys[n] = "filter.lfs.required", values[n++] = "true";
        keys[n] = "filter.lfs.clean", values[n++] = "git-lfs clean -- %f";
        keys[n] = "filter.lfs.smudge", values[n++] = "git-lfs smudge -- %f";
    }
    *ret_n = n;
    return 0;
}

/* Environment of git: nothing from the daemon's but PATH and proxies. */
static int git_env(struct gitlab_checkout *c, char ***ret)
{
    static const char *const pass[] = {"PATH",       "http_proxy",  "https_proxy", "no_proxy",
                                       "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"};
    _cleanup_strv_ char **env = calloc(24 + 2 * MAX_CONFIG, sizeof(char *));
    if (!env)
        return -ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < ARRAY_SIZE(pass); i++) {
        const char *v = getenv(pass[i]);
        if (v && asprintf(&env[n++], "%s=%s", pass[i], v) < 0)
            return -ENOMEM;
    }
    if (!getenv("PATH") && !(env[n++] = strdup("PATH=/usr/local/bin:/usr/bin:/bin")))
        return -ENOMEM;
    const char *fixed[] = {
            "LC_ALL=C",
            "GIT_TERMINAL_PROMPT=0",
            "GIT_ASKPASS=/bin/false",
            "GIT_CONFIG_NOSYSTEM=1",
            "GIT_CONFIG_GLOBAL=/dev/null",
            "GIT_ALLOW_PROTOCOL=http:https",
    };
    for (size_t i = 0; i < ARRAY_SIZE(fixed); i++) {
        if (!(env[n++] = strdup(fixed[i])))
            return -ENOMEM;
    }
    if (asprintf(&env[n++], "HOME=%s", c->dir) < 0)
        return -ENOMEM;
    const char *keys[MAX_CONFIG], *values[MAX_CONFIG];
    _cleanup_free_ char *header_key = NULL, *force_key = NULL;
    size_t nc = 0;
    if (config_pairs(c, keys, values, &nc, &header_key, &force_key) < 0)
        return -ENOMEM;
    if (asprintf(&env[n++], "GIT_CONFIG_COUNT=%zu", nc) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < nc; i++) {
        if (asprintf(&env[n++], "GIT_CONFIG_KEY_%zu=%s", i, keys[i]) < 0 ||
            asprintf(&env[n++], "GIT_CONFIG_VALUE_%zu=%s", i, values[i]) < 0)
            return -ENOMEM;
    }
    *ret = TAKE_PTR(env);
    return 0;
}

static void env_wipe_free(char **env)
{
    for (char **e = env; e && *e; e++)
        explicit_bzero(*e, strlen(*e));
    strv_free(env);
}

static int spawn_git(struct gitlab_checkout *c, const char *const *argv)
{
    struct git_run *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    char **env = NULL;
    int r = git_env(c, &env);
    if (r < 0) {
        free(g);
        return r;
    }
    g->c = c;
    uv_pipe_init(c->loop, &g->err, 0);
    g->err.data = g;
    g->proc.data = g;
    uv_stdio_container_t stdio[3] = {
            {.flags = UV_IGNORE},
            {.flags = UV_IGNORE},
            {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&g->err},
    };
    uv_process_options_t o = {
            .exit_cb = on_exit_cb,
            .file = "git",
            .args = (char **)argv,
            .env = env,
            .flags = UV_PROCESS_DETACHED, /* own process group: killed as a whole */
            .stdio_count = 3,
            .stdio = stdio,
    };
    r = uv_spawn(c->loop, &g->proc, &o);
    env_wipe_free(env);
    if (r < 0) {
        /* a failed spawn has initialised the process handle too */
        g->closing = 2;
        uv_close((uv_handle_t *)&g->err, on_run_closed);
        uv_close((uv_handle_t *)&g->proc, on_run_closed);
        return r;
    }
    g->pending = 2;
    uv_read_start((uv_stream_t *)&g->err, on_alloc, on_read);
    c->run = g;
    return 0;
}

/* ---- packing ------------------------------------------------------------- */

struct tracked_list {
    FILE *f;
    uint64_t bytes, max_bytes;
};

static int list_entry(struct archive_entry *e, const char *rel, void *userdata,
                      struct al_error **err)
{
    struct tracked_list *t = userdata;
    if (streq(rel, ".git") || strncmp(rel, ".git/", 5) == 0 ||
        archive_entry_filetype(e) == AE_IFDIR)
        return 0;
    /* a name tar -X cannot hold: the file counts as untracked */
    if (strchr(rel, '\n'))
        return 0;
    t->bytes += strlen(rel) + 3;
    if (t->max_bytes && t->bytes > t->max_bytes)
        return al_error_set(err, EFBIG, "the list of tracked files exceeds %llu bytes",
                            (unsigned long long)t->max_bytes);
    if (fprintf(t->f, "./%s\n", rel) < 0)
        return al_error_set_errno(err, errno, "writing the list of tracked files");
    return 0;
}

/* Right after the checkout every file of the tree is tracked. */
static int write_tracked_list(struct gitlab_checkout *c, struct al_error **err)
{
    _cleanup_free_ char *path = al_path_join(c->src, GITLAB_TRACKED_LIST);
    if (!path)
        return al_error_set(err, ENOMEM, "out of memory");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        return al_error_set_errno(err, errno, "creating the list of tracked files");
    struct tracked_list t = {.f = fdopen(fd, "w"), .max_bytes = c->max_bytes};
    if (!t.f) {
        close(fd);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    int r = archive_walk_dir(c->src, list_entry, &t, err);
    if (fclose(t.f) != 0 && r == 0)
        r = al_error_set_errno(err, errno, "writing the list of tracked files");
    return r;
}

static int pack_work(void *data, struct al_error **err)
{
    struct gitlab_checkout *c = data;
    int r = c->list_tracked ? write_tracked_list(c, err) : 0;
    /* earlier jobs' artifacts go over the tree, as gitlab-runner unpacks
     * them into the build dir; the same rules as a guest's artifacts */
    struct artifact_limits lim = {.max_bytes = c->max_bytes};
    for (char **z = c->unpack_zips; r == 0 && z && *z; z++) {
        struct artifact_summary s = {0};
        r = artifacts_extract_zip(*z, c->src, &lim, &s, err);
        if (r == 0 && s.truncated)
            r = al_error_set(err, EFBIG, "unpacking the artifacts of an earlier job: %s", s.note);
        else if (r < 0)
            al_error_wrap(err, "unpacking the artifacts of an earlier job");
    }
    if (r == 0)
        r = workdir_pack(c->src, c->tar, c->max_bytes, NULL, err);
    struct al_error *rm_err = NULL;
    if (al_rm_rf(c->src, &rm_err) < 0 && r == 0)
        r = al_error_move(err, &rm_err);
    al_error_free(rm_err);
    return r;
}

static void pack_done(void *data, int result, struct al_error *err)
{
    struct gitlab_checkout *c = data;
    if (result < 0)
        set_failure(c, result, "packing the work dir: %s", al_error_message(err));
    al_error_free(err);
    finish(c);
}

/* ---- steps --------------------------------------------------------------- */

/* Starts the current step. On failure the result is set and the caller
 * finishes. */
static int step_start(struct gitlab_checkout *c)
{
    if (c->canceled) {
        set_failure(c, -ECANCELED, "checkout canceled");
        return c->result;
    }
    while (!step_wanted(c))
        c->step++;
    const char *argv[MAX_ARGS];
    size_t n = 0;
    char depth[32];
    char line[128];
    argv[n++] = "git";
    switch (c->step) {
    case STEP_INIT:
        argv[n++] = "-c";
        argv[n++] = "init.defaultBranch=agentlab";
        argv[n++] = "init";
        argv[n++] = "-q";
        if (strlen(c->sha) == 64)
            argv[n++] = "--object-format=sha256";
        argv[n++] = c->src;
        break;
    case STEP_REMOTE:
        argv[n++] = "-C";
        argv[n++] = c->src;
        argv[n++] = "remote";
        argv[n++] = "add";
        argv[n++] = "origin";
        argv[n++] = c->url;
        break;
    case STEP_FETCH:
        argv[n++] = "-C";
        argv[n++] = c->src;
        argv[n++] = "fetch";
        argv[n++] = "--no-tags";
        argv[n++] = "--no-recurse-submodules";
        if (c->depth > 0) {
            snprintf(depth, sizeof(depth), "--depth=%d", c->depth);
            argv[n++] = depth;
        }
        for (char **f = c->git.fetch_flags; f && *f && n < MAX_ARGS - 3; f++)
            argv[n++] = *f;
        argv[n++] = "origin";
        if (!c->refspecs || !c->refspecs[0])
            argv[n++] = c->sha;
        for (char **s = c->refspecs; s && *s && n < MAX_ARGS - 1; s++)
            argv[n++] = *s;
        break;
    case STEP_CHECKOUT:
        argv[n++] = "-C";
        argv[n++] = c->src;
        argv[n++] = "-c";
        argv[n++] = "advice.detachedHead=false";
        argv[n++] = "checkout";
        argv[n++] = "-q";
        argv[n++] = "-f";
        argv[n++] = c->sha;
        argv[n++] = "--";
        break;
    case STEP_LFS_DETECT:
        argv[n++] = "-C";
        argv[n++] = c->src;
        argv[n++] = "grep";
        argv[n++] = "-q";
        argv[n++] = "-e";
        argv[n++] = "filter=lfs";
        argv[n++] = "--";
        argv[n++] = "*.gitattributes";
        break;
    case STEP_LFS_PULL:
        argv[n++] = "-C";
        argv[n++] = c->src;
        argv[n++] = "lfs";
        argv[n++] = "pull";
        break;
    case STEP_CLEAN:
        argv[n++] = "-C";
        argv[n++] = c->src;
        argv[n++] = "clean";
        for (char **f = c->git.clean_flags; f && *f && n < MAX_ARGS - 1; f++)
            argv[n++] = *f;
        break;
    case STEP_SUBMODULES: {
        bool recursive = c->git.submodules == GITLAB_SUBMODULES_RECURSIVE;
        if (c->submodule_depth > 0)
            snprintf(line, sizeof(line),
                     "Updating/initializing submodules%s with git depth set to %d...\n",
                     recursive ? " recursively" : "", c->submodule_depth);
        else
            snprintf(line, sizeof(line), "Updating/initializing submodules%s...\n",
                     recursive ? " recursively" : "");
        note(c, line);
        argv[n++] = "-C";
        argv[n++] = c->src;
        argv[n++] = "submodule";
        argv[n++] = "--quiet";
        argv[n++] = "update";
        argv[n++] = "--init";
        if (recursive)
            argv[n++] = "--recursive";
        if (c->submodule_depth > 0) {
            snprintf(depth, sizeof(depth), "--depth=%d", c->submodule_depth);
            argv[n++] = depth;
        }
        for (char **f = c->git.submodule_update_flags; f && *f && n < MAX_ARGS - 2; f++)
            argv[n++] = *f;
        argv[n++] = "--";
        for (char **f = c->git.submodule_paths; f && *f && n < MAX_ARGS - 1; f++)
            argv[n++] = *f;
        break;
    }
    case STEP_SUBMODULE_LFS:
        argv[n++] = "-C";
        argv[n++] = c->src;
        argv[n++] = "submodule";
        argv[n++] = "--quiet";
        argv[n++] = "foreach";
        if (c->git.submodules == GITLAB_SUBMODULES_RECURSIVE)
            argv[n++] = "--recursive";
        argv[n++] = SUBMODULE_LFS_CMD;
        break;
    case STEP_PACK: {
        int r = al_work_queue(c->loop, pack_work, pack_done, c, NULL);
        if (r < 0)
            set_failure(c, r, "packing the work dir: %s", strerror(-r));
        return r;
    }
    case STEP_DONE:
        return 0;
    }
    argv[n] = NULL;
    int r = spawn_git(c, argv);
    if (r < 0)
        set_failure(c, r == UV_ENOENT ? -ENOENT : -EIO, "%s: cannot run git: %s",
                    step_names[c->step], uv_strerror(r));
    return r < 0 ? c->result : 0;
}

static char **strv_copy(char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    char **out = calloc(n + 1, sizeof(char *));
    for (size_t i = 0; out && i < n; i++) {
        if (!(out[i] = strdup(v[i]))) {
            strv_free(out);
            return NULL;
        }
    }
    return out;
}

static int git_opts_copy(const struct gitlab_git_opts *from, struct gitlab_git_opts *to,
                         struct al_error **err)
{
    *to = *from;
    to->clean_flags = strv_copy(from->clean_flags);
    to->fetch_flags = strv_copy(from->fetch_flags);
    to->submodule_paths = strv_copy(from->submodule_paths);
    to->submodule_update_flags = strv_copy(from->submodule_update_flags);
    if (!to->clean_flags || !to->fetch_flags || !to->submodule_paths ||
        !to->submodule_update_flags) {
        gitlab_git_opts_clear(to);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    return 0;
}

/* url_base ("scheme://host[:port]/") and the ssh spellings of the host. */
static int url_parts(struct gitlab_checkout *c, struct al_error **err)
{
    const char *auth = strstr(c->url, "://");
    if (!auth)
        return al_error_set(err, EINVAL, "no scheme");
    auth += 3;
    size_t auth_len = strcspn(auth, "/?#");
    size_t host_len = auth_len;
    if (auth[0] == '[') {
        const char *close = memchr(auth, ']', auth_len);
        host_len = close ? (size_t)(close - auth) + 1 : auth_len;
    } else {
        const char *colon = memchr(auth, ':', auth_len);
        if (colon)
            host_len = (size_t)(colon - auth);
    }
    if (asprintf(&c->url_base, "%.*s/", (int)(auth - c->url + auth_len), c->url) < 0 ||
        asprintf(&c->ssh_scp, "git@%.*s:", (int)host_len, auth) < 0 ||
        asprintf(&c->ssh_url, "ssh://git@%.*s/", (int)host_len, auth) < 0)
        return al_error_set(err, ENOMEM, "out of memory");
    return 0;
}

static bool program_in_path(const char *name)
{
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        size_t len = strcspn(path, ":");
        char buf[4096];
        int n = snprintf(buf, sizeof(buf), "%.*s/%s", (int)len, len ? path : ".", name);
        if (len && n > 0 && (size_t)n < sizeof(buf) && access(buf, X_OK) == 0)
            return true;
        path += len;
        if (*path == ':')
            path++;
    }
    return false;
}

static void on_start_failed_closed(uv_handle_t *h)
{
    checkout_free(h->data);
}

static void on_timeout(uv_timer_t *t)
{
    struct gitlab_checkout *c = t->data;
    c->timed_out = true;
    kill_run(c->run);
}

int gitlab_checkout_start(uv_loop_t *loop, const struct gitlab_checkout_params *p,
                          gitlab_checkout_cb cb, void *data, struct gitlab_checkout **ret,
                          struct al_error **err)
{
    struct gitlab_checkout *c = calloc(1, sizeof(*c));
    if (!c)
        return al_error_set(err, ENOMEM, "out of memory");
    c->loop = loop;
    c->cb = cb;
    c->data = data;
    c->note = p->note;
    c->max_bytes = p->max_bytes;
    c->list_tracked = p->list_tracked;
    int r = gitlab_url_strip_credentials(p->repo_url, &c->url, err);
    if (r == 0)
        r = url_parts(c, err);
    if (r == 0 && p->git)
        r = git_opts_copy(p->git, &c->git, err);
    if (r < 0) {
        checkout_free(c);
        return al_error_wrap(err, "repository URL");
    }
    c->depth = gitlab_git_depth(p->git, p->depth);
    c->submodule_depth = gitlab_git_submodule_depth(p->git, p->depth);
    c->lfs_installed = program_in_path("git-lfs");
    size_t n = 0;
    for (const char *const *s = p->unpack_zips; s && *s; s++)
        n++;
    c->unpack_zips = calloc(n + 1, sizeof(char *));
    for (size_t i = 0; c->unpack_zips && i < n; i++) {
        if (!(c->unpack_zips[i] = strdup(p->unpack_zips[i])))
            r = -ENOMEM;
    }
    n = 0;
    for (const char *const *s = p->refspecs; s && *s; s++)
        n++;
    c->refspecs = calloc(n + 1, sizeof(char *));
    _cleanup_free_ char *userpass = NULL;
    if (c->refspecs) {
        for (size_t i = 0; i < n; i++) {
            if (!(c->refspecs[i] = strdup(p->refspecs[i])))
                r = -ENOMEM;
        }
    }
    c->dir = strdup(p->dir);
    c->src = al_path_join(p->dir, "src");
    c->tar = al_path_join(p->dir, "workdir.tar");
    c->sha = strdup(p->sha);
    if (asprintf(&userpass, "gitlab-ci-token:%s", p->token) < 0)
        userpass = NULL;
    if (userpass) {
        c->auth_b64 = gitlab_base64(userpass, strlen(userpass));
        explicit_bzero(userpass, strlen(userpass));
    }
    if (c->auth_b64 && asprintf(&c->auth_header, "Authorization: Basic %s", c->auth_b64) < 0)
        c->auth_header = NULL;
    if (r < 0 || !c->refspecs || !c->unpack_zips || !c->dir || !c->src || !c->tar || !c->sha ||
        !c->auth_header) {
        checkout_free(c);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    if (al_redact_add(c->auth_b64) < 0) {
        al_wipe_free(c->auth_b64);
        c->auth_b64 = NULL;
        checkout_free(c);
        return al_error_set(err, ENOMEM, "registering the checkout credentials");
    }
    r = al_rm_rf(c->dir, err);
    if (r == 0)
        r = al_mkdir_p(c->dir, 0700, err);
    if (r < 0) {
        checkout_free(c);
        return r;
    }
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    int64_t t = p->timeout_s > 0 ? p->timeout_s : DEFAULT_TIMEOUT_S;
    uv_timer_start(&c->timer, on_timeout, (uint64_t)t * 1000u, 0);
    c->step = STEP_INIT;
    if (step_start(c) < 0) {
        r = al_error_set(err, -c->result, "%s", c->message);
        al_rm_rf(c->dir, NULL);
        uv_close((uv_handle_t *)&c->timer, on_start_failed_closed);
        return r;
    }
    *ret = c;
    return 0;
}

void gitlab_checkout_cancel(struct gitlab_checkout *c)
{
    if (!c || c->step == STEP_DONE)
        return;
    c->canceled = true;
    kill_run(c->run);
}
