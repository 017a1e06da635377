#include "images/builder.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "images/apt_sources.h"
#include "images/inuse.h"
#include "images/packages.h"
#include "images/recipe.h"
#include "images/sweep.h"
#include "provision/accel.h"
#include "runner/base/buf.h"
#include "runner/base/sha256.h"
#include "runner/base/util.h"

#ifndef AL_LIBEXECDIR
#define AL_LIBEXECDIR "/usr/local/libexec"
#endif
#ifndef AL_DATADIR
#define AL_DATADIR "/usr/local/share"
#endif

#define BUILDER_VERSION \
    "agentlab " AL_VERSION " (image builder " STRINGIFY(IMAGE_BUILDER_REVISION) ")"
#define STRINGIFY(x)      STRINGIFY_(x)
#define STRINGIFY_(x)     #x
#define HELPER_NAME       "agentlab-guest"
#define UNIT_NAME         "agentlab-guest.service"
#define DEFAULT_MIN_FREE  (3ull << 30)
#define BOOTSTRAP_STOP_MS 60000
#define EATMYDATA_HOOKS   "/usr/share/mmdebstrap/hooks/eatmydata"

extern char **environ;

void image_build_cancel_request(struct image_cancel *c)
{
    if (!c)
        return;
    c->requested = 1;
    pid_t pid = c->pid;
    if (pid > 0)
        kill(c->pid_pgrp ? -pid : pid, SIGTERM);
}

void image_build_result_clear(struct image_build_result *r)
{
    r->info = image_info_free(r->info);
    free(r->log_path);
    r->log_path = NULL;
    r->up_to_date = false;
}

static bool is_cancelled(const struct image_build_opts *o)
{
    return o->cancel && o->cancel->requested;
}

static void notify(const struct image_build_opts *o, enum image_build_event ev,
                   enum image_phase phase, uint64_t elapsed_ms, const char *detail)
{
    if (o->progress)
        o->progress(o->progress_data, ev, phase, elapsed_ms, detail);
}

/* ---- locating things ---- */

static bool is_executable_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode) && access(p, X_OK) == 0;
}

static bool is_readable_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode) && access(p, R_OK) == 0;
}

static char *self_dir(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return NULL;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return NULL;
    *slash = '\0';
    return strdup(exe[0] ? exe : "/");
}

int image_guest_helper_find(const char *explicit_path, char **ret_helper, char **ret_unit,
                            struct al_error **err)
{
    _cleanup_free_ char *helper = NULL;
    const char *how = NULL;
    const char *env = getenv("AGENTLAB_GUEST_HELPER");
    if (explicit_path) {
        how = "--guest-helper";
        helper = strdup(explicit_path);
    } else if (env && env[0]) {
        how = "AGENTLAB_GUEST_HELPER";
        helper = strdup(env);
    } else {
        _cleanup_free_ char *dir = self_dir();
        _cleanup_free_ char *beside = dir ? al_path_join(dir, HELPER_NAME) : NULL;
        if (beside && is_executable_file(beside))
            helper = TAKE_PTR(beside);
        else
            helper = strdup(AL_LIBEXECDIR "/agentlab/" HELPER_NAME);
        if (!helper)
            return al_error_set(err, ENOMEM, "finding the guest helper");
        if (!is_executable_file(helper))
            return al_error_set(err, ENOENT,
                                "the in-guest helper %s was not found next to this program or "
                                "in " AL_LIBEXECDIR "/agentlab (build the agentlab-guest target, "
                                "or pass --guest-helper PATH or set AGENTLAB_GUEST_HELPER)",
                                HELPER_NAME);
    }
    if (!helper)
        return al_error_set(err, ENOMEM, "finding the guest helper");
    if (!is_executable_file(helper))
        return al_error_set(err, ENOENT,
                            "the in-guest helper %s (from %s) is not an executable file", helper,
                            how ? how : "search");

    char real[PATH_MAX];
    if (!realpath(helper, real))
        return al_error_set_errno(err, errno, "resolving %s", helper);
    _cleanup_free_ char *hdir = strdup(real);
    if (!hdir)
        return al_error_set(err, ENOMEM, "finding the guest helper");
    char *slash = strrchr(hdir, '/');
    if (slash)
        *slash = '\0';
    const char *candidates[3] = {NULL, AL_DATADIR "/agentlab/" UNIT_NAME, NULL};
    _cleanup_free_ char *beside = al_path_join(hdir[0] ? hdir : "/", UNIT_NAME);
    candidates[0] = beside;
#ifdef AL_SOURCE_DIR
    candidates[2] = AL_SOURCE_DIR "/provision/guest/" UNIT_NAME;
#endif
    for (size_t i = 0; i < ARRAY_SIZE(candidates); i++) {
        if (candidates[i] && is_readable_file(candidates[i])) {
            char *unit = strdup(candidates[i]);
            char *h = strdup(real);
            if (!unit || !h) {
                free(unit);
                free(h);
                return al_error_set(err, ENOMEM, "finding the guest helper");
            }
            *ret_helper = h;
            *ret_unit = unit;
            return 0;
        }
    }
    return al_error_set(err, ENOENT,
                        "the systemd unit " UNIT_NAME " was not found next to %s or in " AL_DATADIR
                        "/agentlab",
                        real);
}

/* ---- inputs and their hash ---- */

struct inputs {
    struct recipe *recipe;
    char *helper;
    char *unit;
    char *helper_sha256;
    char *sources; /* apt source lines for the bootstrap */
    char *hash;
};

static void inputs_clear(struct inputs *in)
{
    recipe_free(in->recipe);
    free(in->helper);
    free(in->unit);
    free(in->helper_sha256);
    free(in->sources);
    free(in->hash);
    *in = (struct inputs){0};
}

static int resolve_sources(const struct recipe *r, char **ret, struct al_error **err)
{
    if (r->mirrors) {
        _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
        for (char **m = r->mirrors; *m; m++) {
            int k;
            if (strncmp(*m, "deb ", 4) == 0) {
                k = al_buf_printf(&b, "%s\n", *m);
            } else {
                k = al_buf_printf(&b, "deb %s %s", *m, r->suite);
                for (char **c = r->components; c && *c && k >= 0; c++)
                    k = al_buf_printf(&b, " %s", *c);
                if (k >= 0)
                    k = al_buf_puts(&b, "\n");
            }
            if (k < 0)
                return al_error_set(err, ENOMEM, "preparing apt sources");
        }
        *ret = al_buf_steal(&b);
        return *ret ? 0 : al_error_set(err, ENOMEM, "preparing apt sources");
    }
    struct apt_sources s = {0};
    const char *root = getenv("AGENTLAB_APT_ROOT"); /* tests */
    int k = apt_sources_read_host(&s, root && root[0] ? root : "/", err);
    if (k == 0) {
        k = apt_sources_render(&s, r->suite, r->components, ret);
        if (k == -ENOENT)
            k = al_error_set(err, ENOENT,
                             "the host's apt sources have no entry for suite \"%s\"; add "
                             "\"mirror = URI\" to [bootstrap] in %s/" RECIPE_FILE,
                             r->suite, r->dir);
        else if (k < 0)
            k = al_error_set(err, ENOMEM, "preparing apt sources");
    }
    apt_sources_clear(&s);
    return k;
}

static int load_inputs(const struct image_build_opts *o, struct inputs *in, struct al_error **err)
{
    _cleanup_strv_ char **path = recipe_search_path(o->recipes_dir);
    if (!path)
        return al_error_set(err, ENOMEM, "finding recipes");
    _cleanup_free_ char *dir = NULL;
    int r = recipe_find(path, o->recipe, &dir, err);
    if (r < 0)
        return r;
    r = recipe_load(dir, &in->recipe, err);
    if (r < 0)
        return r;
    r = image_guest_helper_find(o->guest_helper, &in->helper, &in->unit, err);
    if (r < 0)
        return r;
    char hex[AL_SHA256_HEX_SIZE];
    r = al_sha256_file(in->helper, hex, NULL, err);
    if (r < 0)
        return r;
    in->helper_sha256 = strdup(hex);
    if (!in->helper_sha256)
        return al_error_set(err, ENOMEM, "hashing inputs");
    r = resolve_sources(in->recipe, &in->sources, err);
    if (r < 0)
        return r;

    struct al_sha256 ctx;
    al_sha256_init(&ctx);
    static const char tag[] = "agentlab image recipe\n" BUILDER_VERSION "\n";
    al_sha256_update(&ctx, tag, sizeof(tag));
    r = recipe_hash_tree(in->recipe->dir, &ctx, err);
    if (r < 0)
        return al_error_wrap(err, "hashing recipe %s", in->recipe->name);
    al_sha256_update(&ctx, "helper\n", 7);
    al_sha256_update(&ctx, hex, sizeof(hex));
    r = al_sha256_file(in->unit, hex, NULL, err);
    if (r < 0)
        return r;
    al_sha256_update(&ctx, "unit\n", 5);
    al_sha256_update(&ctx, hex, sizeof(hex));
    al_sha256_update(&ctx, "sources\n", 8);
    al_sha256_update(&ctx, in->sources, strlen(in->sources) + 1);
    al_sha256_final_hex(&ctx, hex);
    in->hash = strdup(hex);
    return in->hash ? 0 : al_error_set(err, ENOMEM, "hashing inputs");
}

int image_recipe_hash(const struct image_build_opts *opts, char **ret_hash, char **ret_recipe_dir,
                      struct al_error **err)
{
    struct inputs in = {0};
    int r = load_inputs(opts, &in, err);
    if (r == 0) {
        char *h = strdup(in.hash);
        char *d = ret_recipe_dir ? strdup(in.recipe->dir) : NULL;
        if (!h || (ret_recipe_dir && !d)) {
            free(h);
            free(d);
            r = al_error_set(err, ENOMEM, "hashing inputs");
        } else {
            *ret_hash = h;
            if (ret_recipe_dir)
                *ret_recipe_dir = d;
        }
    }
    inputs_clear(&in);
    return r;
}

/* ---- helpers for the build directory ---- */

static void remove_build_dir(const char *dir)
{
    if (!dir)
        return;
    image_umount_below(dir);
    (void)al_rm_rf(dir, NULL);
}

static bool path_is_hook_safe(const char *p)
{
    /* mmdebstrap splits special hook arguments on whitespace */
    return p && !strpbrk(p, " \t\n'\"\\$`");
}

static int check_free_space(const char *dir, struct al_error **err)
{
    uint64_t need = DEFAULT_MIN_FREE;
    const char *env = getenv("AGENTLAB_IMAGE_MIN_FREE");
    if (env && env[0] && al_parse_size(env, &need) < 0)
        return al_error_set(err, EINVAL, "AGENTLAB_IMAGE_MIN_FREE=\"%s\" is not a size", env);
    struct statvfs sv;
    if (statvfs(dir, &sv) < 0)
        return al_error_set_errno(err, errno, "statvfs %s", dir);
    uint64_t avail = (uint64_t)sv.f_bavail * sv.f_frsize;
    if (avail < need)
        return al_error_set(err, ENOSPC,
                            "not enough disk space in %s: %.1f GiB free, an image build needs "
                            "%.1f GiB",
                            dir, (double)avail / (1 << 30), (double)need / (1 << 30));
    return 0;
}

/* ---- the bootstrap phase (mmdebstrap) ---- */

struct argv_builder {
    char **v;
    size_t n;
    bool oom;
};

static void argv_add(struct argv_builder *a, const char *fmt, ...) _printf_(2, 3);
static void argv_add(struct argv_builder *a, const char *fmt, ...)
{
    if (a->oom)
        return;
    char *s = NULL;
    va_list ap;
    va_start(ap, fmt);
    int k = vasprintf(&s, fmt, ap);
    va_end(ap);
    char **nv = k >= 0 ? realloc(a->v, (a->n + 2) * sizeof(char *)) : NULL;
    if (!nv) {
        if (k >= 0)
            free(s);
        a->oom = true;
        return;
    }
    a->v = nv;
    a->v[a->n++] = s;
    a->v[a->n] = NULL;
}

struct bootstrap {
    const struct image_build_opts *o;
    const struct inputs *in;
    const char *build_dir;
    const char *cache_dir; /* may be NULL */
    const char *log_path;
    const char *tarball;
};

static int bootstrap_argv(const struct bootstrap *b, const char *sources_file, char ***ret)
{
    const struct recipe *r = b->in->recipe;
    struct argv_builder a = {0};
    argv_add(&a, "mmdebstrap");
    argv_add(&a, "--mode=root");
    argv_add(&a, "--format=tar");
    argv_add(&a, "--variant=%s", r->variant);
    _cleanup_buf_ struct al_buf pkgs = AL_BUF_INIT;
    for (char **p = r->packages; *p; p++)
        al_buf_printf(&pkgs, "%s%s", p == r->packages ? "" : ",", *p);
    argv_add(&a, "--include=%s", pkgs.data ? pkgs.data : "");
    argv_add(&a, "--aptopt=Acquire::Retries \"3\"");
    for (char **p = r->dpkg_exclude; p && *p; p++)
        argv_add(&a, "--dpkgopt=path-exclude=%s", *p);
    for (char **p = r->dpkg_include; p && *p; p++)
        argv_add(&a, "--dpkgopt=path-include=%s", *p);
    struct stat st;
    if (stat(EATMYDATA_HOOKS, &st) == 0 && S_ISDIR(st.st_mode))
        argv_add(&a, "--hook-dir=" EATMYDATA_HOOKS);
    if (b->cache_dir) {
        /* keep downloaded packages between builds */
        argv_add(&a, "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives");
        argv_add(&a, "--setup-hook=sync-in %s /var/cache/apt/archives", b->cache_dir);
        argv_add(&a, "--skip=essential/unlink");
    }
    if (r->rootfs_dir)
        argv_add(&a, "--essential-hook=sync-in %s /", r->rootfs_dir);
    argv_add(&a,
             "--customize-hook=chroot \"$1\" useradd --create-home --user-group --shell /bin/bash "
             "--comment \"agentlab job user\" %s",
             r->user);
    if (r->hooks_dir)
        argv_add(&a, "--hook-dir=%s", r->hooks_dir);
    if (b->cache_dir)
        argv_add(&a, "--customize-hook=sync-out /var/cache/apt/archives %s", b->cache_dir);
    argv_add(&a, "%s", r->suite);
    argv_add(&a, "%s", b->tarball);
    argv_add(&a, "%s", sources_file);
    if (a.oom) {
        strv_free(a.v);
        return -ENOMEM;
    }
    *ret = a.v;
    return 0;
}

static int bootstrap_env(const struct bootstrap *b, char ***ret)
{
    struct argv_builder a = {0};
    const char *skip[] = {"TMPDIR=", "APT_CONFIG="};
    for (char **e = environ; e && *e; e++) {
        bool drop = false;
        for (size_t i = 0; i < ARRAY_SIZE(skip); i++)
            drop = drop || strncmp(*e, skip[i], strlen(skip[i])) == 0;
        if (!drop)
            argv_add(&a, "%s", *e);
    }
    /* mmdebstrap's chroot goes into the build dir: removed with it */
    argv_add(&a, "TMPDIR=%s", b->build_dir);
    for (char **e = b->in->recipe->environment; e && *e; e++)
        argv_add(&a, "%s", *e);
    if (a.oom) {
        strv_free(a.v);
        return -ENOMEM;
    }
    *ret = a.v;
    return 0;
}

static void wait_child(pid_t pid, int *status)
{
    while (waitpid(pid, status, 0) < 0 && errno == EINTR)
        ;
}

static int run_bootstrap(const struct bootstrap *b, struct al_error **err)
{
    const struct image_build_opts *o = b->o;
    _cleanup_free_ char *sources_file = al_path_join(b->build_dir, "sources.list");
    if (!sources_file)
        return al_error_set(err, ENOMEM, "bootstrap");
    int r = al_write_file_atomic(sources_file, b->in->sources, strlen(b->in->sources), 0644, err);
    if (r < 0)
        return r;
    _cleanup_strv_ char **argv = NULL;
    _cleanup_strv_ char **envp = NULL;
    if (bootstrap_argv(b, sources_file, &argv) < 0 || bootstrap_env(b, &envp) < 0)
        return al_error_set(err, ENOMEM, "bootstrap");

    _cleanup_close_ int logfd =
            open(b->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (logfd < 0)
        return al_error_set_errno(err, errno, "creating %s", b->log_path);
    _cleanup_buf_ struct al_buf cmd = AL_BUF_INIT;
    al_buf_puts(&cmd, "$");
    for (char **p = argv; *p; p++)
        al_buf_printf(&cmd, " '%s'", *p);
    al_buf_puts(&cmd, "\n");
    if (cmd.data && write(logfd, cmd.data, cmd.len) < 0)
        return al_error_set_errno(err, errno, "writing %s", b->log_path);

    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return al_error_set_errno(err, errno, "bootstrap");
    _cleanup_close_ int rd = pipefd[0];
    _cleanup_close_ int wr = pipefd[1];
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, wr, 1);
    posix_spawn_file_actions_adddup2(&fa, wr, 2);
    posix_spawnattr_init(&attr);
    /* its own process group: a terminal's Ctrl-C reaches us, and we stop it
     * with SIGTERM so it can unmount and clean up */
    posix_spawnattr_setpgroup(&attr, 0);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    sigset_t dfl;
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGINT);
    sigaddset(&dfl, SIGTERM);
    sigaddset(&dfl, SIGPIPE);
    posix_spawnattr_setsigdefault(&attr, &dfl);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                            POSIX_SPAWN_SETSIGDEF);
    pid_t pid = 0;
    int k = posix_spawnp(&pid, argv[0], &fa, &attr, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (k != 0)
        return al_error_set_errno(err, k, "running mmdebstrap");
    close(TAKE_FD(wr));
    if (o->cancel) {
        o->cancel->pid_pgrp = 1;
        o->cancel->pid = pid;
    }

    struct al_buf line = {.limit = 8192};
    char last_error[512] = "";
    bool eof = false, stopping = false, enospc = false;
    uint64_t stop_deadline = 0;
    while (!eof) {
        if (is_cancelled(o) && !stopping) {
            stopping = true;
            stop_deadline = al_now_mono_ms() + BOOTSTRAP_STOP_MS;
            kill(-pid, SIGTERM);
        }
        if (stopping && al_now_mono_ms() > stop_deadline) {
            kill(-pid, SIGKILL);
            break;
        }
        struct pollfd p = {.fd = rd, .events = POLLIN};
        int n = poll(&p, 1, 250);
        if (n < 0 && errno != EINTR)
            break;
        if (n <= 0)
            continue;
        char chunk[4096];
        ssize_t got = read(rd, chunk, sizeof(chunk));
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got <= 0) {
            eof = true;
            got = 0;
        }
        if (got > 0 && write(logfd, chunk, (size_t)got) < 0)
            (void)0; /* the log is best effort; the build result is what counts */
        for (ssize_t i = 0; i < got; i++) {
            if (chunk[i] != '\n') {
                (void)al_buf_append(&line, &chunk[i], 1);
                continue;
            }
            const char *l = line.data ? line.data : "";
            if (strstr(l, "No space left on device"))
                enospc = true;
            if (strncmp(l, "I: ", 3) == 0)
                notify(o, IMAGE_BUILD_PHASE_DETAIL, IMAGE_PHASE_BOOTSTRAP, 0, l + 3);
            else if (strncmp(l, "E: ", 3) == 0 && !last_error[0])
                snprintf(last_error, sizeof(last_error), "%s", l + 3);
            al_buf_reset(&line);
        }
    }
    al_buf_free(&line);
    int status = 0;
    wait_child(pid, &status);
    if (o->cancel)
        o->cancel->pid = 0;
    /* grandchildren (apt, dpkg) may outlive an interrupted mmdebstrap */
    if (stopping)
        kill(-pid, SIGKILL);
    if (is_cancelled(o))
        return al_error_set(err, ECANCELED, "interrupted");
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        (void)unlink(sources_file);
        return 0;
    }
    if (enospc)
        return al_error_set(err, ENOSPC, "mmdebstrap ran out of disk space in %s (log: %s)",
                            b->build_dir, b->log_path);
    if (WIFSIGNALED(status))
        return al_error_set(err, EIO, "mmdebstrap was killed by signal %d (log: %s)",
                            WTERMSIG(status), b->log_path);
    return al_error_set(err, EIO, "mmdebstrap failed: %s (log: %s)",
                        last_error[0] ? last_error : "see the log", b->log_path);
}

/* ---- finishing ---- */

/* Drops cached .debs that the new image does not contain, so the cache
 * holds one image's worth of packages instead of growing forever. */
static void prune_apt_cache(const char *cache_dir, const struct image_package *pkgs, size_t n)
{
    DIR *d = opendir(cache_dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 5 || !streq(de->d_name + len - 4, ".deb"))
            continue;
        bool keep = false;
        for (size_t i = 0; i < n && !keep; i++) {
            /* name_version_arch.deb, a version's ':' written as %3a */
            _cleanup_buf_ struct al_buf prefix = AL_BUF_INIT;
            al_buf_printf(&prefix, "%.*s_", (int)strcspn(pkgs[i].name, ":"), pkgs[i].name);
            for (const char *v = pkgs[i].version; *v; v++)
                (void)(*v == ':' ? al_buf_puts(&prefix, "%3a") : al_buf_append(&prefix, v, 1));
            al_buf_puts(&prefix, "_");
            keep = prefix.data && strncmp(de->d_name, prefix.data, prefix.len) == 0;
        }
        if (!keep)
            (void)unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
}

static int swap_into_place(const struct image_build_opts *o, const char *build_dir,
                           const char *final_dir, struct al_error **err)
{
    _cleanup_close_ int lock = image_lock(o->state_dir, o->recipe, true, 10000, err);
    if (lock < 0)
        return lock;
    struct stat st;
    if (lstat(final_dir, &st) == 0) {
        _cleanup_free_ pid_t *pids = NULL;
        size_t n = 0;
        int r = image_live_users(final_dir, &pids, &n, err);
        if (r < 0)
            return r;
        if (n > 0)
            return al_error_set(err, EBUSY,
                                "not replacing image \"%s\": process %d is using it; run the "
                                "build again when its jobs have finished",
                                o->recipe, (int)pids[0]);
        if (o->libvirt_uri) {
            _cleanup_strv_ char **doms = NULL;
            _cleanup_error_ struct al_error *verr = NULL;
            if (inuse_libvirt_domains(o->libvirt_uri, final_dir, &doms, &verr) < 0) {
                notify(o, IMAGE_BUILD_NOTICE, IMAGE_PHASE_CHECKSUM, 0,
                       "could not ask libvirt whether the old image is in use; replacing it");
            } else if (doms && doms[0]) {
                return al_error_set(err, EBUSY,
                                    "not replacing image \"%s\": libvirt domain %s uses it",
                                    o->recipe, doms[0]);
            }
        }
        /* atomic: the name always points at a complete image */
        if (renameat2(AT_FDCWD, build_dir, AT_FDCWD, final_dir, RENAME_EXCHANGE) == 0)
            return 0; /* the old image is now in build_dir and goes with it */
        if (errno != EINVAL && errno != ENOSYS)
            return al_error_set_errno(err, errno, "replacing %s", final_dir);
        _cleanup_free_ char *old = NULL;
        if (asprintf(&old, "%s.old", build_dir) < 0)
            return al_error_set(err, ENOMEM, "replacing %s", final_dir);
        if (rename(final_dir, old) < 0)
            return al_error_set_errno(err, errno, "moving %s aside", final_dir);
        if (rename(build_dir, final_dir) < 0) {
            int e = errno;
            (void)rename(old, final_dir);
            return al_error_set_errno(err, e, "renaming %s", build_dir);
        }
        (void)al_rm_rf(old, NULL);
        return 0;
    }
    if (rename(build_dir, final_dir) < 0)
        return al_error_set_errno(err, errno, "renaming %s to %s", build_dir, final_dir);
    return 0;
}

static int finish(const struct image_build_opts *o, const struct inputs *in, const char *build_dir,
                  const char *kernel_version, uint64_t *phase_ms, struct image_info **ret,
                  struct al_error **err)
{
    _cleanup_image_info_ struct image_info *info = calloc(1, sizeof(*info));
    if (!info)
        return al_error_set(err, ENOMEM, "writing the manifest");
    const struct recipe *rc = in->recipe;
    info->name = strdup(o->recipe);
    info->dir = strdup(build_dir);
    info->disk = al_path_join(build_dir, IMAGE_DISK_FILE);
    info->kernel = al_path_join(build_dir, IMAGE_KERNEL_FILE);
    info->initrd = al_path_join(build_dir, IMAGE_INITRD_FILE);
    info->format = strdup("qcow2");
    info->cmdline = strdup(rc->cmdline);
    info->recipe = strdup(rc->name);
    info->recipe_hash = strdup(in->hash);
    info->kernel_version = strdup(kernel_version);
    info->filesystem_label = strdup(rc->label);
    info->builder_version = strdup(BUILDER_VERSION);
    info->guest_helper_sha256 = strdup(in->helper_sha256);
    info->virtual_size = rc->size;
    info->created_ms = al_now_wall_ms();
    if (!info->name || !info->dir || !info->disk || !info->kernel || !info->initrd ||
        !info->format || !info->cmdline || !info->recipe || !info->recipe_hash ||
        !info->kernel_version || !info->filesystem_label || !info->builder_version ||
        !info->guest_helper_sha256)
        return al_error_set(err, ENOMEM, "writing the manifest");

    _cleanup_free_ char *status_path = al_path_join(build_dir, "dpkg-status");
    _cleanup_free_ char *status = NULL;
    if (!status_path)
        return al_error_set(err, ENOMEM, "writing the manifest");
    int r = al_read_file(status_path, DPKG_STATUS_MAX_BYTES, &status, NULL, err);
    if (r < 0)
        return r;
    r = dpkg_status_parse(status, &info->packages, &info->n_packages, err);
    if (r < 0)
        return al_error_wrap(err, "reading the image's package list");
    (void)unlink(status_path);

    uint64_t t0 = al_now_mono_ms();
    char hex[AL_SHA256_HEX_SIZE];
    r = al_sha256_file(info->disk, hex, &info->size, err);
    if (r < 0)
        return r;
    info->sha256 = strdup(hex);
    if (!info->sha256)
        return al_error_set(err, ENOMEM, "writing the manifest");
    if (is_cancelled(o))
        return al_error_set(err, ECANCELED, "interrupted");
    for (int p = 0; p < IMAGE_PHASE_COUNT; p++)
        info->build_ms[p] = phase_ms[p];
    info->build_ms[IMAGE_PHASE_CHECKSUM] = al_now_mono_ms() - t0;
    /* readable by QEMU running as libvirt-qemu */
    if (chmod(info->disk, 0644) < 0 || chmod(build_dir, 0755) < 0)
        return al_error_set_errno(err, errno, "chmod %s", build_dir);
    r = image_manifest_write(build_dir, info, err);
    if (r < 0)
        return r;
    *ret = TAKE_PTR(info);
    return 0;
}

static bool image_is_current(const char *state_dir, const char *name, const char *hash)
{
    _cleanup_image_info_ struct image_info *info = NULL;
    if (image_find(state_dir, name, &info, NULL) < 0)
        return false;
    struct stat st;
    return info->recipe_hash && streq(info->recipe_hash, hash) && stat(info->disk, &st) == 0 &&
           stat(info->kernel, &st) == 0 && stat(info->initrd, &st) == 0;
}

/* disk.c reports the switch from the disk to the seal phase through this. */
struct phase_clock {
    const struct image_build_opts *o;
    uint64_t start;
    uint64_t *ms;
};

static void on_phase(void *data, enum image_phase phase)
{
    struct phase_clock *clock = data;
    if (phase != IMAGE_PHASE_SEAL)
        return;
    uint64_t now = al_now_mono_ms();
    clock->ms[IMAGE_PHASE_DISK] = now - clock->start;
    notify(clock->o, IMAGE_BUILD_PHASE_DONE, IMAGE_PHASE_DISK, clock->ms[IMAGE_PHASE_DISK], NULL);
    notify(clock->o, IMAGE_BUILD_PHASE_START, IMAGE_PHASE_SEAL, 0, NULL);
    notify(clock->o, IMAGE_BUILD_PHASE_DETAIL, IMAGE_PHASE_SEAL, 0,
           "machine-id, cloud-init, units, guest helper, kernel");
    clock->start = now;
}

static int build_in(const struct image_build_opts *o, const struct inputs *in,
                    const char *build_dir, const char *cache_dir, const char *log_path,
                    bool force_tcg, struct image_info **ret, struct al_error **err)
{
    uint64_t phase_ms[IMAGE_PHASE_COUNT] = {0};
    _cleanup_free_ char *tarball = al_path_join(build_dir, "rootfs.tar");
    _cleanup_free_ char *disk = al_path_join(build_dir, IMAGE_DISK_FILE);
    if (!tarball || !disk)
        return al_error_set(err, ENOMEM, "building");

    notify(o, IMAGE_BUILD_PHASE_START, IMAGE_PHASE_BOOTSTRAP, 0, NULL);
    uint64_t t = al_now_mono_ms();
    struct bootstrap b = {.o = o,
                          .in = in,
                          .build_dir = build_dir,
                          .cache_dir = cache_dir,
                          .log_path = log_path,
                          .tarball = tarball};
    int r = run_bootstrap(&b, err);
    if (r < 0)
        return al_error_wrap(err, "bootstrap");
    phase_ms[IMAGE_PHASE_BOOTSTRAP] = al_now_mono_ms() - t;
    notify(o, IMAGE_BUILD_PHASE_DONE, IMAGE_PHASE_BOOTSTRAP, phase_ms[IMAGE_PHASE_BOOTSTRAP], NULL);

    struct phase_clock clock = {o, al_now_mono_ms(), phase_ms};
    notify(o, IMAGE_BUILD_PHASE_START, IMAGE_PHASE_DISK, 0, NULL);
    notify(o, IMAGE_BUILD_PHASE_DETAIL, IMAGE_PHASE_DISK, 0,
           "starting the libguestfs appliance, unpacking the rootfs");
    struct disk_build_opts d = {
            .rootfs_tar = tarball,
            .disk = disk,
            .size = in->recipe->size,
            .filesystem = in->recipe->filesystem,
            .label = in->recipe->label,
            .force_tcg = force_tcg,
            .tcg_fallback = o->accel_mode == ACCEL_AUTO,
            .seal = {.mask = in->recipe->mask,
                     .user = in->recipe->user,
                     .user_sudo = in->recipe->user_sudo,
                     .hostname = in->recipe->hostname,
                     .helper = in->helper,
                     .unit = in->unit},
            .out_dir = build_dir,
            .phase = on_phase,
            .phase_data = &clock,
            .cancel = o->cancel,
    };
    struct disk_build_result dr = {0};
    r = disk_build(&d, &dr, err);
    if (dr.kvm_failure[0] && accel_mark_kvm_unusable(o->accel_cache_dir, dr.kvm_failure)) {
        _cleanup_free_ char *msg = NULL;
        if (asprintf(&msg, "KVM is not usable (%s): the libguestfs appliance runs under TCG",
                     dr.kvm_failure) >= 0)
            notify(o, IMAGE_BUILD_NOTICE, IMAGE_PHASE_DISK, 0, msg);
    }
    if (r < 0)
        return al_error_wrap(err, "%s", clock.ms[IMAGE_PHASE_DISK] ? "seal" : "disk");
    _cleanup_free_ char *kernel_version = dr.kernel_version;
    phase_ms[IMAGE_PHASE_SEAL] = al_now_mono_ms() - clock.start;
    notify(o, IMAGE_BUILD_PHASE_DONE, IMAGE_PHASE_SEAL, phase_ms[IMAGE_PHASE_SEAL], NULL);
    (void)unlink(tarball);

    notify(o, IMAGE_BUILD_PHASE_START, IMAGE_PHASE_CHECKSUM, 0, NULL);
    notify(o, IMAGE_BUILD_PHASE_DETAIL, IMAGE_PHASE_CHECKSUM, 0, "sha256 of the disk");
    t = al_now_mono_ms();
    r = finish(o, in, build_dir, kernel_version, phase_ms, ret, err);
    if (r < 0)
        return al_error_wrap(err, "checksum");
    notify(o, IMAGE_BUILD_PHASE_DONE, IMAGE_PHASE_CHECKSUM, al_now_mono_ms() - t, NULL);
    return 0;
}

int image_build(const struct image_build_opts *o, struct image_build_result *ret,
                struct al_error **err)
{
    if (!image_name_is_valid(o->recipe))
        return al_error_set(err, EINVAL, "invalid recipe name \"%s\"", o->recipe);
    struct inputs in = {0};
    int r = load_inputs(o, &in, err);
    if (r < 0) {
        inputs_clear(&in);
        return r;
    }
    if (!o->force && image_is_current(o->state_dir, o->recipe, in.hash)) {
        r = image_find(o->state_dir, o->recipe, &ret->info, err);
        ret->up_to_date = r == 0;
        inputs_clear(&in);
        return r;
    }

    _cleanup_free_ char *root = image_root_path(o->state_dir);
    _cleanup_free_ char *final_dir = image_dir_path(o->state_dir, o->recipe);
    _cleanup_free_ char *logs = root ? al_path_join(root, ".logs") : NULL;
    _cleanup_free_ char *log_path = NULL;
    _cleanup_free_ char *cache_dir = al_path_join(o->state_dir, "cache/apt/archives");
    _cleanup_free_ char *build_dir = NULL;
    _cleanup_close_ int build_lock = -1;
    _cleanup_image_info_ struct image_info *info = NULL;
    bool force_tcg = false;
    if (!root || !final_dir || !logs || !cache_dir ||
        asprintf(&log_path, "%s/%s.log", logs, o->recipe) < 0) {
        r = al_error_set(err, ENOMEM, "building");
        goto out;
    }
    /* every directory on the way must be traversable by libvirt-qemu */
    if ((r = al_mkdir_p(root, 0755, err)) < 0 || (r = al_mkdir_p(logs, 0755, err)) < 0)
        goto out;
    if (!path_is_hook_safe(cache_dir) || al_mkdir_p(cache_dir, 0755, NULL) < 0) {
        free(cache_dir);
        cache_dir = NULL;
    }
    if (in.recipe->rootfs_dir && !path_is_hook_safe(in.recipe->rootfs_dir)) {
        r = al_error_set(err, EINVAL, "recipe path %s must not contain spaces or quotes",
                         in.recipe->rootfs_dir);
        goto out;
    }
    static const char *const tools[][2] = {{"mmdebstrap", "mmdebstrap"},
                                           {"qemu-system-x86_64", "qemu-system-x86"}};
    for (size_t i = 0; i < ARRAY_SIZE(tools); i++) {
        _cleanup_free_ char *found = al_find_in_path(tools[i][0]);
        if (!found) {
            r = al_error_set(err, ENOENT,
                             "%s not found in PATH (run scripts/setup.sh, or apt-get install %s)",
                             tools[i][0], tools[i][1]);
            goto out;
        }
    }
    if ((r = check_free_space(root, err)) < 0)
        goto out;
    build_lock = image_build_lock(root, o->recipe, err);
    if (build_lock < 0) {
        r = build_lock;
        goto out;
    }
    /* what a killed build of this image left behind */
    (void)image_sweep_builds(o->state_dir, o->recipe, true, NULL, NULL);

    struct accel_result accel;
    struct accel_probe_opts ao = {.mode = o->accel_mode, .cache_dir = o->accel_cache_dir};
    r = accel_probe(&ao, &accel, err);
    if (r < 0)
        goto out;
    force_tcg = accel.kind != ACCEL_KIND_KVM;
    /* said once per boot: whoever probed first says it */
    if (force_tcg && o->accel_mode == ACCEL_AUTO && !accel.from_cache) {
        _cleanup_free_ char *msg = NULL;
        if (asprintf(&msg,
                     "KVM is not usable (%s): the libguestfs appliance runs under TCG, "
                     "which is slower",
                     accel.reason) >= 0)
            notify(o, IMAGE_BUILD_NOTICE, IMAGE_PHASE_BOOTSTRAP, 0, msg);
    }

    if (asprintf(&build_dir, "%s/" IMAGE_BUILD_DIR_PREFIX "%s-XXXXXX", root, o->recipe) < 0) {
        build_dir = NULL;
        r = al_error_set(err, ENOMEM, "building");
        goto out;
    }
    if (!mkdtemp(build_dir)) {
        r = al_error_set_errno(err, errno, "creating a build directory in %s", root);
        free(build_dir);
        build_dir = NULL;
        goto out;
    }
    r = build_in(o, &in, build_dir, cache_dir, log_path, force_tcg, &info, err);
    if (r < 0)
        goto out;
    if (is_cancelled(o)) {
        r = al_error_set(err, ECANCELED, "interrupted");
        goto out;
    }
    r = swap_into_place(o, build_dir, final_dir, err);
    if (r < 0)
        goto out;
    if (cache_dir)
        prune_apt_cache(cache_dir, info->packages, info->n_packages);
    r = image_find(o->state_dir, o->recipe, &ret->info, err);
    if (r == 0)
        ret->log_path = TAKE_PTR(log_path);
out:
    /* after a successful swap build_dir holds the old image, or nothing */
    remove_build_dir(build_dir);
    inputs_clear(&in);
    if (r < 0 && is_cancelled(o) && r != -ECANCELED) {
        if (err)
            *err = al_error_free(*err);
        r = al_error_set(err, ECANCELED, "interrupted");
    }
    return r;
}
