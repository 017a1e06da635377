#include "accel.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/util.h"
#include "runner/config.h"

#define PROBE_TIMEOUT_MS 10000
#define PROBE_CACHE_FILE "accel-probe"
#define PROBE_EXIT_VALUE 0x10
/* isa-debug-exit turns a write of v into exit status (v << 1) | 1 */
#define PROBE_EXIT_STATUS ((PROBE_EXIT_VALUE << 1) | 1)
#define PROBE_BIOS_SIZE   65536
#define PROBE_BIOS_FD     3

extern char **environ;

static pthread_mutex_t probe_lock = PTHREAD_MUTEX_INITIALIZER;
static bool probe_done;
static struct accel_result probe_cached;

const char *accel_domain_type(const struct accel_result *r)
{
    return r && r->kind == ACCEL_KIND_KVM ? "kvm" : "qemu";
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

/* Cache file: "boot_id=ID\nkind=kvm|tcg\nreason=TEXT\n". */
static int cache_read(const char *cache_dir, const char *boot_id, struct accel_result *ret)
{
    _cleanup_free_ char *path = al_path_join(cache_dir, PROBE_CACHE_FILE);
    _cleanup_free_ char *data = NULL;
    if (!path || al_read_file(path, 4096, &data, NULL, NULL) < 0)
        return -ENOENT;
    struct accel_result r = {.from_cache = true};
    bool id_ok = false, kind_ok = false;
    char *save = NULL;
    for (char *line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "boot_id=", 8) == 0) {
            id_ok = streq(line + 8, boot_id);
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
    if (!id_ok || !kind_ok)
        return -ESTALE;
    *ret = r;
    return 0;
}

static void cache_write(const char *cache_dir, const char *boot_id, const struct accel_result *r)
{
    _cleanup_free_ char *path = al_path_join(cache_dir, PROBE_CACHE_FILE);
    _cleanup_free_ char *text = NULL;
    if (!path || al_mkdir_p(cache_dir, 0755, NULL) < 0)
        return;
    if (asprintf(&text, "boot_id=%s\nkind=%s\nreason=%s\n", boot_id,
                 r->kind == ACCEL_KIND_KVM ? "kvm" : "tcg", r->reason) < 0)
        return;
    /* a cache that cannot be written only costs another probe later */
    (void)al_write_file_atomic(path, text, strlen(text), 0644, NULL);
}

/* A 64 KiB firmware image whose reset vector writes PROBE_EXIT_VALUE to the
 * isa-debug-exit port: QEMU exits with PROBE_EXIT_STATUS only if a vCPU
 * really executed guest code under KVM. */
static int make_probe_bios(void)
{
    static const unsigned char reset[] = {
            0xb0, PROBE_EXIT_VALUE, /* mov al, PROBE_EXIT_VALUE */
            0xe6, 0xf4,             /* out 0xf4, al */
            0xf4,                   /* hlt */
            0xeb, 0xfd,             /* jmp hlt */
    };
    _cleanup_free_ unsigned char *img = calloc(1, PROBE_BIOS_SIZE);
    if (!img)
        return -ENOMEM;
    memcpy(img + PROBE_BIOS_SIZE - 16, reset, sizeof(reset));
    _cleanup_close_ int fd = memfd_create("agentlab-accel-probe", MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    for (size_t off = 0; off < PROBE_BIOS_SIZE;) {
        ssize_t k = write(fd, img + off, PROBE_BIOS_SIZE - off);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        off += (size_t)k;
    }
    return TAKE_FD(fd);
}

/* The first line of QEMU's stderr without the "qemu-system-x86_64: " prefix. */
static void first_line(const char *text, char *out, size_t size)
{
    const char *p = text;
    while (*p == '\n' || *p == ' ')
        p++;
    size_t n = strcspn(p, "\n");
    const char *colon = memchr(p, ':', n);
    if (colon && strncmp(p, "qemu-system", 11) == 0 && colon[1] == ' ') {
        n -= (size_t)(colon + 2 - p);
        p = colon + 2;
    }
    snprintf(out, size, "%.*s", (int)n, p);
}

static void run_probe(struct accel_result *r)
{
    r->kind = ACCEL_KIND_TCG;
    r->from_cache = false;

    _cleanup_close_ int bios = make_probe_bios();
    if (bios < 0) {
        set_reason(r, "could not prepare the KVM probe: %s", strerror(-bios));
        return;
    }
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        set_reason(r, "could not prepare the KVM probe: %s", strerror(errno));
        return;
    }
    _cleanup_close_ int rd = pipefd[0];
    _cleanup_close_ int wr = pipefd[1];

    char bios_arg[32];
    snprintf(bios_arg, sizeof(bios_arg), "/dev/fd/%d", PROBE_BIOS_FD);
    char *const argv[] = {"qemu-system-x86_64",
                          "-accel",
                          "kvm",
                          "-machine",
                          "pc",
                          "-cpu",
                          "host",
                          "-m",
                          "16",
                          "-nodefaults",
                          "-no-user-config",
                          "-display",
                          "none",
                          "-serial",
                          "none",
                          "-monitor",
                          "none",
                          "-no-reboot",
                          "-bios",
                          bios_arg,
                          "-device",
                          "isa-debug-exit,iobase=0xf4,iosize=0x04",
                          NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, wr, 2);
    posix_spawn_file_actions_adddup2(&fa, bios, PROBE_BIOS_FD);
    pid_t pid = 0;
    int r_spawn = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (r_spawn != 0) {
        set_reason(r, "cannot run qemu-system-x86_64: %s", strerror(r_spawn));
        return;
    }
    close(TAKE_FD(wr));

    struct al_buf out = {.limit = 4096};
    uint64_t deadline = al_now_mono_ms() + PROBE_TIMEOUT_MS;
    bool timed_out = false;
    for (;;) {
        uint64_t now = al_now_mono_ms();
        if (now >= deadline) {
            timed_out = true;
            break;
        }
        struct pollfd p = {.fd = rd, .events = POLLIN};
        int k = poll(&p, 1, (int)(deadline - now));
        if (k < 0 && errno != EINTR)
            break;
        if (k <= 0)
            continue;
        char chunk[512];
        ssize_t got = read(rd, chunk, sizeof(chunk));
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break; /* EOF: QEMU exited (or closed stderr) */
        (void)al_buf_append(&out, chunk, (size_t)got);
    }
    if (timed_out)
        kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;

    char line[200] = "";
    first_line(out.data ? out.data : "", line, sizeof(line));
    al_buf_free(&out);
    if (!timed_out && WIFEXITED(status) && WEXITSTATUS(status) == PROBE_EXIT_STATUS) {
        r->kind = ACCEL_KIND_KVM;
        r->reason[0] = '\0';
    } else if (timed_out) {
        set_reason(r, "QEMU with KVM did not finish a trivial guest in %d s",
                   PROBE_TIMEOUT_MS / 1000);
    } else if (WIFSIGNALED(status)) {
        set_reason(r, "%s%sQEMU with KVM was killed by signal %d (%s)", line, line[0] ? "; " : "",
                   WTERMSIG(status), strsignal(WTERMSIG(status)));
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == 127 && !line[0]) {
        /* the shell's "command not found", or an exec failure reported late */
        set_reason(r, "cannot run qemu-system-x86_64 (not installed?)");
    } else if (line[0]) {
        set_reason(r, "%s", line);
    } else {
        set_reason(r, "QEMU with KVM exited with status %d", WEXITSTATUS(status));
    }
}

void accel_probe_reset(void)
{
    pthread_mutex_lock(&probe_lock);
    probe_done = false;
    pthread_mutex_unlock(&probe_lock);
}

int accel_probe(int mode, const char *cache_dir, struct accel_result *ret, struct al_error **err)
{
    struct accel_result r = {0};
    if (mode == ACCEL_TCG) {
        r.kind = ACCEL_KIND_TCG;
        set_reason(&r, "accel = tcg in the configuration");
        *ret = r;
        return 0;
    }
    if (mode != ACCEL_AUTO && mode != ACCEL_KVM)
        return al_error_set(err, EINVAL, "unknown accelerator mode %d", mode);

    pthread_mutex_lock(&probe_lock);
    if (probe_done) {
        r = probe_cached;
        r.from_cache = true;
    } else {
        char boot_id[64] = "";
        bool have_id = read_boot_id(boot_id, sizeof(boot_id)) == 0;
        if (!(cache_dir && have_id && cache_read(cache_dir, boot_id, &r) == 0)) {
            run_probe(&r);
            if (cache_dir && have_id)
                cache_write(cache_dir, boot_id, &r);
        }
        probe_cached = r;
        probe_done = true;
    }
    pthread_mutex_unlock(&probe_lock);

    if (mode == ACCEL_KVM && r.kind != ACCEL_KIND_KVM)
        return al_error_set(err, ENODEV, "accel = kvm, but KVM does not work here: %s", r.reason);
    *ret = r;
    return 0;
}
