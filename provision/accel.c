#include "provision/accel.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/util.h"

#define PROBE_TIMEOUT_MS   20000
#define PROBE_CACHE_FILE   "accel-probe"
#define PROBE_QEMU         "qemu-system-x86_64"
#define PROBE_SERIAL_LIMIT (1u << 20)
/* printed first by every Linux kernel, and last by one that booted all the
 * way to mounting its root file system, which the probe gives it none of */
#define PROBE_BANNER "Linux version "
#define PROBE_END    "Kernel panic - not syncing"

extern char **environ;

/* The machine types QEMU is started with: libvirt's default ("pc") for job
 * domains, q35 for libguestfs appliances. Both with -cpu host, as both use
 * under KVM. */
static const char *const probe_machines[] = {"pc", "q35"};

static pthread_mutex_t probe_lock = PTHREAD_MUTEX_INITIALIZER;
static bool probe_done;
static struct accel_result probe_cached;
/* what the cached verdict was probed with, for accel_mark_kvm_unusable */
static char probe_boot_id[64];
static char probe_key[1024];

const char *accel_domain_type(const struct accel_result *r)
{
    return r && r->kind == ACCEL_KIND_KVM ? "kvm" : "qemu";
}

const char *accel_kind_name(enum accel_kind k)
{
    return k == ACCEL_KIND_KVM ? "kvm" : "tcg";
}

static void set_reason(struct accel_result *r, const char *fmt, ...) _printf_(2, 3);
static void set_reason(struct accel_result *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof(r->reason), fmt, ap);
    va_end(ap);
}

static int read_boot_id(char *buf, size_t size)
{
    _cleanup_free_ char *data = NULL;
    if (al_read_file("/proc/sys/kernel/random/boot_id", 256, &data, NULL, NULL) < 0)
        return -ENOENT;
    data[strcspn(data, "\n")] = '\0';
    if (!data[0] || strlen(data) >= size)
        return -EINVAL;
    snprintf(buf, size, "%s", data);
    return 0;
}

/* ------------------------------------------------------------ the cache */

/* "boot_id=ID\nkey=WHAT\nkind=kvm|tcg\nreason=TEXT\n" */
static int cache_read(const char *cache_dir, const char *boot_id, const char *key,
                      struct accel_result *ret)
{
    _cleanup_free_ char *path = al_path_join(cache_dir, PROBE_CACHE_FILE);
    _cleanup_free_ char *data = NULL;
    if (!path || al_read_file(path, 8192, &data, NULL, NULL) < 0)
        return -ENOENT;
    struct accel_result r = {.from_cache = true};
    bool id_ok = false, key_ok = false, kind_ok = false;
    char *save = NULL;
    for (char *line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "boot_id=", 8) == 0) {
            id_ok = streq(line + 8, boot_id);
        } else if (strncmp(line, "key=", 4) == 0) {
            key_ok = streq(line + 4, key);
        } else if (streq(line, "kind=kvm")) {
            r.kind = ACCEL_KIND_KVM;
            kind_ok = true;
        } else if (streq(line, "kind=tcg")) {
            r.kind = ACCEL_KIND_TCG;
            kind_ok = true;
        } else if (strncmp(line, "reason=", 7) == 0) {
            snprintf(r.reason, sizeof(r.reason), "%s", line + 7);
        }
    }
    if (!id_ok || !key_ok || !kind_ok)
        return -ESTALE;
    *ret = r;
    return 0;
}

static void cache_write(const char *cache_dir, const char *boot_id, const char *key,
                        const struct accel_result *r)
{
    _cleanup_free_ char *path = al_path_join(cache_dir, PROBE_CACHE_FILE);
    _cleanup_free_ char *text = NULL;
    if (!path || al_mkdir_p(cache_dir, 0755, NULL) < 0)
        return;
    if (asprintf(&text, "boot_id=%s\nkey=%s\nkind=%s\nreason=%s\n", boot_id, key,
                 accel_kind_name(r->kind), r->reason) < 0)
        return;
    /* a cache that cannot be written only costs another probe later */
    (void)al_write_file_atomic(path, text, strlen(text), 0644, NULL);
}

/* ------------------------------------------------- what gets probed */

/* The host's running kernel in /boot, else the newest readable one there. */
static char *find_kernel(void)
{
    struct utsname u;
    if (uname(&u) == 0) {
        char *k = NULL;
        if (asprintf(&k, "/boot/vmlinuz-%s", u.release) < 0)
            return NULL;
        if (access(k, R_OK) == 0)
            return k;
        free(k);
    }
    DIR *d = opendir("/boot");
    if (!d)
        return NULL;
    char *best = NULL;
    struct timespec best_mtime = {0};
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, "vmlinuz-", 8) != 0)
            continue;
        char *k = al_path_join("/boot", de->d_name);
        struct stat st;
        if (!k || stat(k, &st) < 0 || !S_ISREG(st.st_mode) || access(k, R_OK) < 0 ||
            (best && (st.st_mtim.tv_sec < best_mtime.tv_sec ||
                      (st.st_mtim.tv_sec == best_mtime.tv_sec &&
                       st.st_mtim.tv_nsec <= best_mtime.tv_nsec)))) {
            free(k);
            continue;
        }
        free(best);
        best = k;
        best_mtime = st.st_mtim;
    }
    closedir(d);
    return best;
}

static int file_id(const char *path, char *buf, size_t size)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return -errno;
    int n = snprintf(buf, size, "%s:%jd:%jd.%09ld", path, (intmax_t)st.st_size,
                     (intmax_t)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    return n > 0 && (size_t)n < size ? 0 : -ENAMETOOLONG;
}

/* ------------------------------------------------------------ one boot */

/* Copies the printable part of the first (or last) non-empty line of text. */
static void pick_line(const char *text, size_t len, bool last, char *out, size_t size)
{
    const char *best = NULL;
    size_t best_n = 0;
    for (size_t i = 0; i < len;) {
        size_t n = 0;
        while (i + n < len && text[i + n] != '\n' && text[i + n] != '\r')
            n++;
        bool blank = true;
        for (size_t k = 0; k < n; k++)
            blank &= text[i + k] == ' ' || text[i + k] == '\t';
        if (!blank) {
            best = text + i;
            best_n = n;
            if (!last)
                break;
        }
        i += n + 1;
    }
    size_t o = 0;
    for (size_t k = 0; best && k < best_n && o + 1 < size; k++) {
        unsigned char c = (unsigned char)best[k];
        out[o++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    out[o] = '\0';
}

/* The first line of QEMU's stderr without the "qemu-system-x86_64: " prefix. */
static void qemu_error_line(const struct al_buf *err, char *out, size_t size)
{
    char line[200];
    pick_line(err->data ? err->data : "", err->len, false, line, sizeof(line));
    const char *p = line;
    const char *colon = strstr(line, ": ");
    if (colon && strncmp(line, "qemu-system", 11) == 0)
        p = colon + 2;
    snprintf(out, size, "%s", p);
}

static bool buf_has(const struct al_buf *b, const char *needle)
{
    return b->data && memmem(b->data, b->len, needle, strlen(needle)) != NULL;
}

/* Boots kernel under KVM on machine; true when it got through its boot and
 * QEMU exited by itself in time. Otherwise r->reason says what happened. */
static bool probe_boot(const char *qemu, const char *kernel, const char *machine, int timeout_ms,
                       struct accel_result *r)
{
    int outp[2], errp[2];
    if (pipe2(outp, O_CLOEXEC) < 0) {
        set_reason(r, "could not prepare the KVM probe: %s", strerror(errno));
        return false;
    }
    if (pipe2(errp, O_CLOEXEC) < 0) {
        set_reason(r, "could not prepare the KVM probe: %s", strerror(errno));
        close(outp[0]);
        close(outp[1]);
        return false;
    }
    _cleanup_close_ int out_rd = outp[0];
    _cleanup_close_ int err_rd = errp[0];
    _cleanup_close_ int out_wr = outp[1];
    _cleanup_close_ int err_wr = errp[1];

    char *const argv[] = {(char *)qemu, "-accel", "kvm", "-machine", (char *)machine, "-cpu",
                          "host", "-smp", "1", "-m", "256", "-nodefaults", "-no-user-config",
                          "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
                          "-kernel", (char *)kernel,
                          /* no initramfs and no root: the kernel boots until
                           * it cannot mount a root file system, panics and
                           * reboots at once, which -no-reboot turns into an
                           * exit */
                          "-append", "console=ttyS0 loglevel=7 panic=-1", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out_wr, 1);
    posix_spawn_file_actions_adddup2(&fa, err_wr, 2);
    /* its own process group, so a stand-in script's children die with it */
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    pid_t pid = 0;
    int r_spawn = posix_spawn(&pid, qemu, &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (r_spawn != 0) {
        set_reason(r, "cannot run %s: %s", qemu, strerror(r_spawn));
        return false;
    }
    close(TAKE_FD(out_wr));
    close(TAKE_FD(err_wr));

    struct al_buf serial = {.limit = PROBE_SERIAL_LIMIT}, errs = {.limit = 4096};
    uint64_t start = al_now_mono_ms(), deadline = start + (uint64_t)timeout_ms;
    bool timed_out = false;
    while (out_rd >= 0 || err_rd >= 0) {
        uint64_t now = al_now_mono_ms();
        if (now >= deadline) {
            timed_out = true;
            break;
        }
        struct pollfd p[2] = {{.fd = out_rd, .events = POLLIN}, {.fd = err_rd, .events = POLLIN}};
        int k = poll(p, 2, (int)(deadline - now));
        if (k < 0 && errno != EINTR)
            break;
        for (int i = 0; k > 0 && i < 2; i++) {
            if (!p[i].revents)
                continue;
            int *fd = i == 0 ? &out_rd : &err_rd;
            char chunk[4096];
            ssize_t got = read(*fd, chunk, sizeof(chunk));
            if (got < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            if (got <= 0) {
                close(*fd);
                *fd = -1;
                continue;
            }
            /* past the limit the text is not needed: the verdict comes from
             * its beginning and QEMU's exit */
            (void)al_buf_append(i == 0 ? &serial : &errs, chunk, (size_t)got);
        }
    }
    if (timed_out)
        kill(-pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;

    bool banner = buf_has(&serial, PROBE_BANNER), end = buf_has(&serial, PROBE_END);
    char err_line[200], con_line[160];
    qemu_error_line(&errs, err_line, sizeof(err_line));
    bool ok = false;
    if (timed_out) {
        if (banner)
            set_reason(r,
                       "a Linux kernel started under KVM (machine %s) but did not finish "
                       "booting in %d s",
                       machine, timeout_ms / 1000);
        else if (serial.len) {
            pick_line(serial.data, serial.len, true, con_line, sizeof(con_line));
            set_reason(r,
                       "a Linux kernel did not start under KVM (machine %s) in %d s; the "
                       "console stopped at \"%s\"",
                       machine, timeout_ms / 1000, con_line);
        } else
            set_reason(r,
                       "a Linux kernel printed nothing in %d s under KVM (machine %s): "
                       "this KVM cannot run Linux guests",
                       timeout_ms / 1000, machine);
    } else if (WIFSIGNALED(status)) {
        set_reason(r, "%s%sQEMU with KVM was killed by signal %d (%s)", err_line,
                   err_line[0] ? "; " : "", WTERMSIG(status), strsignal(WTERMSIG(status)));
    } else if (banner && end && WEXITSTATUS(status) == 0) {
        ok = true;
        r->reason[0] = '\0';
    } else if (err_line[0]) {
        set_reason(r, "%s", err_line);
    } else if (WEXITSTATUS(status) == 127 && !serial.len) {
        /* an exec failure reported late */
        set_reason(r, "cannot run %s (not installed?)", qemu);
    } else if (banner) {
        pick_line(serial.data, serial.len, true, con_line, sizeof(con_line));
        set_reason(r,
                   "a Linux kernel stopped under KVM (machine %s) before the end of its boot "
                   "(QEMU exit status %d); the console stopped at \"%s\"",
                   machine, WEXITSTATUS(status), con_line);
    } else if (serial.len) {
        pick_line(serial.data, serial.len, false, con_line, sizeof(con_line));
        set_reason(r,
                   "QEMU with KVM (machine %s) exited with status %d and no Linux banner; "
                   "the console said \"%s\"",
                   machine, WEXITSTATUS(status), con_line);
    } else {
        set_reason(r,
                   "QEMU with KVM (machine %s) exited with status %d before a Linux kernel "
                   "printed anything",
                   machine, WEXITSTATUS(status));
    }
    al_buf_free(&serial);
    al_buf_free(&errs);
    return ok;
}

/* ------------------------------------------------------------ decision */

/* Works out what would be probed and its key; returns false (with the
 * reason in r) when there is nothing KVM could be tried with. */
static bool probe_inputs(const struct accel_probe_opts *o, const char *dev, char **ret_kernel,
                         char **ret_qemu, char *key, size_t key_size, struct accel_result *r)
{
    int fd = open(dev, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(key, key_size, "device=%s:%s", dev, strerror(e));
        if (e == ENOENT)
            set_reason(r, "%s does not exist (no KVM on this host)", dev);
        else
            set_reason(r, "cannot open %s: %s", dev, strerror(e));
        return false;
    }
    close(fd);

    _cleanup_free_ char *kernel = o->kernel ? strdup(o->kernel) : find_kernel();
    _cleanup_free_ char *qemu = al_find_in_path(PROBE_QEMU);
    char kid[480] = "", qid[480] = "";
    if (kernel)
        (void)file_id(kernel, kid, sizeof(kid));
    if (qemu)
        (void)file_id(qemu, qid, sizeof(qid));
    snprintf(key, key_size, "kernel=%s qemu=%s device=%s", kid, qid, dev);
    if (!kernel || !kid[0] || access(kernel, R_OK) < 0) {
        set_reason(r,
                   "no Linux kernel to prove KVM with (%s not readable; install "
                   "linux-image-amd64)",
                   o->kernel ? o->kernel : "/boot/vmlinuz-*");
        return false;
    }
    if (!qemu || !qid[0]) {
        set_reason(r, "cannot run %s (not installed?)", PROBE_QEMU);
        return false;
    }
    *ret_kernel = TAKE_PTR(kernel);
    *ret_qemu = TAKE_PTR(qemu);
    return true;
}

static void decide(const struct accel_probe_opts *o, const char *boot_id, bool have_id,
                   struct accel_result *r)
{
    *r = (struct accel_result){.kind = ACCEL_KIND_TCG};
    const char *dev = o->kvm_device ? o->kvm_device : "/dev/kvm";
    _cleanup_free_ char *kernel = NULL, *qemu = NULL;
    char key[sizeof(probe_key)];
    bool can_try = probe_inputs(o, dev, &kernel, &qemu, key, sizeof(key), r);
    snprintf(probe_key, sizeof(probe_key), "%s", key);
    struct accel_result cached;
    if (o->cache_dir && have_id && cache_read(o->cache_dir, boot_id, key, &cached) == 0) {
        *r = cached;
        return;
    }
    if (can_try) {
        int timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : PROBE_TIMEOUT_MS;
        bool ok = true;
        for (size_t i = 0; ok && i < ARRAY_SIZE(probe_machines); i++)
            ok = probe_boot(qemu, kernel, probe_machines[i], timeout_ms, r);
        r->kind = ok ? ACCEL_KIND_KVM : ACCEL_KIND_TCG;
    }
    r->from_cache = false;
    if (o->cache_dir && have_id)
        cache_write(o->cache_dir, boot_id, key, r);
}

void accel_probe_reset(void)
{
    pthread_mutex_lock(&probe_lock);
    probe_done = false;
    probe_key[0] = '\0';
    pthread_mutex_unlock(&probe_lock);
}

int accel_probe(const struct accel_probe_opts *o, struct accel_result *ret, struct al_error **err)
{
    struct accel_result r = {0};
    if (o->mode == ACCEL_TCG) {
        r.kind = ACCEL_KIND_TCG;
        set_reason(&r, "accel = tcg in the configuration");
        *ret = r;
        return 0;
    }
    if (o->mode != ACCEL_AUTO && o->mode != ACCEL_KVM)
        return al_error_set(err, EINVAL, "unknown accelerator mode %d", o->mode);

    pthread_mutex_lock(&probe_lock);
    if (probe_done) {
        r = probe_cached;
        r.from_cache = true;
    } else {
        bool have_id = read_boot_id(probe_boot_id, sizeof(probe_boot_id)) == 0;
        probe_key[0] = '\0';
        decide(o, probe_boot_id, have_id, &r);
        probe_cached = r;
        probe_done = true;
    }
    pthread_mutex_unlock(&probe_lock);

    if (o->mode == ACCEL_KVM && r.kind != ACCEL_KIND_KVM)
        return al_error_set(err, ENODEV, "accel = kvm, but KVM does not work here: %s", r.reason);
    *ret = r;
    return 0;
}

bool accel_mark_kvm_unusable(const char *cache_dir, const char *reason)
{
    pthread_mutex_lock(&probe_lock);
    bool first = !probe_done || probe_cached.kind == ACCEL_KIND_KVM;
    if (first) {
        probe_cached = (struct accel_result){.kind = ACCEL_KIND_TCG};
        set_reason(&probe_cached, "%s", reason);
        probe_done = true;
        if (cache_dir && probe_boot_id[0] && probe_key[0])
            cache_write(cache_dir, probe_boot_id, probe_key, &probe_cached);
    }
    pthread_mutex_unlock(&probe_lock);
    return first;
}
