#include "provision/guest/spawn.h"

#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/close_range.h>
#include <pwd.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

void guest_user_free(struct guest_user *u)
{
    if (!u)
        return;
    free(u->groups);
    free(u->name);
    free(u->home);
    free(u->shell);
    memset(u, 0, sizeof(*u));
}

static int load_groups(struct guest_user *u, struct al_error **err)
{
    int n = 16;
    for (int tries = 0; tries < 8; tries++) {
        gid_t *g = calloc((size_t)n, sizeof(*g));
        if (!g)
            return al_error_set(err, ENOMEM, "out of memory");
        int want = n;
        if (getgrouplist(u->name, u->gid, g, &want) >= 0) {
            u->groups = g;
            u->ngroups = want;
            return 0;
        }
        free(g);
        if (want <= n || want > 65536)
            break;
        n = want;
    }
    return al_error_set(err, EIO, "cannot list the groups of user '%s'", u->name);
}

int guest_user_resolve(const char *name, struct guest_user *ret, struct al_error **err)
{
    struct guest_user u = {0};
    bool root = geteuid() == 0;
    errno = 0;
    struct passwd *pw = root ? getpwnam(name) : getpwuid(geteuid());
    if (!pw) {
        int e = errno ? errno : ENOENT;
        if (root)
            return al_error_set(err, ENOENT, "no such user '%s'", name);
        return al_error_set_errno(err, e, "cannot look up uid %u", (unsigned)geteuid());
    }
    u.uid = pw->pw_uid;
    u.gid = pw->pw_gid;
    u.drop = root && pw->pw_uid != 0;
    u.name = strdup(pw->pw_name);
    u.home = strdup(pw->pw_dir && pw->pw_dir[0] ? pw->pw_dir : "/");
    u.shell = strdup(pw->pw_shell && pw->pw_shell[0] ? pw->pw_shell : "/bin/sh");
    if (!u.name || !u.home || !u.shell) {
        guest_user_free(&u);
        return al_error_set(err, ENOMEM, "out of memory");
    }
    if (u.drop) {
        int r = load_groups(&u, err);
        if (r < 0) {
            guest_user_free(&u);
            return r;
        }
    }
    *ret = u;
    return 0;
}

enum spawn_stage { STAGE_FDS, STAGE_USER, STAGE_CWD, STAGE_PREPARE, STAGE_EXEC };

struct child_report {
    int stage;
    int err;
};

static _Noreturn void child_fail(int fd, int stage, int e)
{
    struct child_report rep = {.stage = stage, .err = e};
    ssize_t w = write(fd, &rep, sizeof(rep));
    (void)w;
    _exit(127);
}

/* Everything here runs in the forked child of a single-threaded parent. */
static _Noreturn void child_run(const struct guest_spawn_opts *o, int report_fd)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* ignored dispositions survive exec: give the workload the defaults */
    static const int sigs[] = {SIGPIPE, SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        signal(sigs[i], SIG_DFL);

    if (o->new_pgroup && setpgid(0, 0) < 0)
        child_fail(report_fd, STAGE_FDS, errno);

    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0)
        child_fail(report_fd, STAGE_FDS, errno);
    int src[4] = {o->stdin_fd, o->stdout_fd, o->stderr_fd, o->fd3};
    int hi[4];
    int nfds = o->fd3 >= 0 ? 4 : 3;
    /* move every source above the targets first so no dup2 clobbers one */
    for (int i = 0; i < nfds; i++) {
        hi[i] = fcntl(src[i] >= 0 ? src[i] : devnull, F_DUPFD_CLOEXEC, 10);
        if (hi[i] < 0)
            child_fail(report_fd, STAGE_FDS, errno);
    }
    for (int i = 0; i < nfds; i++)
        if (dup2(hi[i], i) < 0)
            child_fail(report_fd, STAGE_FDS, errno);
    /* belt and braces: nothing the helper holds leaks into the workload */
    close_range((unsigned)nfds, ~0u, CLOSE_RANGE_CLOEXEC);

    const struct guest_user *u = o->user;
    if (u && u->drop) {
        if (setgroups((size_t)u->ngroups, u->groups) < 0 || setgid(u->gid) < 0 ||
            setuid(u->uid) < 0)
            child_fail(report_fd, STAGE_USER, errno);
        if (setuid(0) == 0 || getuid() != u->uid || geteuid() != u->uid)
            child_fail(report_fd, STAGE_USER, EPERM);
    }
    if (o->cwd && chdir(o->cwd) < 0)
        child_fail(report_fd, STAGE_CWD, errno);

    char **argv = (char **)o->argv;
    if (o->prepare) {
        int r = o->prepare(o->prepare_data, &argv);
        if (r == 1)
            _exit(0);
        if (r < 0)
            child_fail(report_fd, STAGE_PREPARE, -r);
    }
    environ = (char **)o->envp;
    execvp(argv[0], argv);
    child_fail(report_fd, STAGE_EXEC, errno);
}

static const char *stage_text(int stage)
{
    switch (stage) {
    case STAGE_FDS:
        return "setting up file descriptors";
    case STAGE_USER:
        return "switching user";
    case STAGE_CWD:
        return "changing to the work dir";
    case STAGE_PREPARE:
        return "preparing";
    default:
        return "executing";
    }
}

int guest_spawn(const struct guest_spawn_opts *o, pid_t *ret_pid, bool *exec_failed,
                struct al_error **err)
{
    if (exec_failed)
        *exec_failed = false;
    int rp[2];
    if (pipe2(rp, O_CLOEXEC) < 0)
        return al_error_set_errno(err, errno, "pipe");
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(rp[0]);
        close(rp[1]);
        return al_error_set_errno(err, e, "fork");
    }
    if (pid == 0) {
        close(rp[0]);
        child_run(o, rp[1]);
    }
    close(rp[1]);
    if (o->new_pgroup)
        setpgid(pid, pid); /* also here, so a kill right after fork hits the group */

    struct child_report rep;
    ssize_t n;
    do {
        n = read(rp[0], &rep, sizeof(rep));
    } while (n < 0 && errno == EINTR);
    close(rp[0]);
    if (n == 0) {
        *ret_pid = pid;
        return 0;
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (n != (ssize_t)sizeof(rep))
        return al_error_set(err, EIO, "child failed before exec");
    if (exec_failed)
        *exec_failed = rep.stage == STAGE_EXEC;
    return al_error_set_errno(err, rep.err > 0 ? rep.err : EIO, "%s '%.200s'",
                              stage_text(rep.stage), rep.stage == STAGE_CWD ? o->cwd : o->argv[0]);
}

static int ensure_dir(const char *path, mode_t mode, bool *ret_created, struct al_error **err)
{
    if (mkdir(path, mode) == 0) {
        *ret_created = true;
        return 0;
    }
    if (errno != EEXIST)
        return al_error_set_errno(err, errno, "creating '%s'", path);
    struct stat st;
    if (stat(path, &st) < 0)
        return al_error_set_errno(err, errno, "checking '%s'", path);
    if (!S_ISDIR(st.st_mode))
        return al_error_set(err, ENOTDIR, "'%s' exists and is not a directory", path);
    *ret_created = false;
    return 0;
}

int guest_make_workdir(const char *dir, const struct guest_user *u, struct al_error **err)
{
    if (dir[0] != '/')
        return al_error_set(err, EINVAL, "work dir '%s' is not absolute", dir);
    size_t len = strlen(dir);
    if (len >= PATH_MAX)
        return al_error_set(err, ENAMETOOLONG, "work dir path too long");
    char path[PATH_MAX];
    memcpy(path, dir, len + 1);
    while (len > 1 && path[len - 1] == '/')
        path[--len] = '\0';

    /* Runs before any job code: nothing under these paths is the user's
     * yet, so creating the parents as the helper's own user is safe. */
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        bool created = false;
        int r = ensure_dir(path, 0755, &created, err);
        *p = '/';
        if (r < 0)
            return r;
    }
    bool created = false;
    int r = ensure_dir(path, 0750, &created, err);
    if (r < 0)
        return r;
    if (created && u->drop) {
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return al_error_set_errno(err, errno, "opening '%s'", path);
        int fr = fchown(fd, u->uid, u->gid);
        int e = errno;
        close(fd);
        if (fr < 0)
            return al_error_set_errno(err, e, "handing '%s' to user '%s'", path, u->name);
    }
    return 0;
}
