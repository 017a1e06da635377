#include "provision/appliance_watchdog.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runner/base/util.h"

#define WATCH_INTERVAL_MS 250

struct watch {
    const char *sockdir;
    int bound_s;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
    bool killed;
};

/* The appliance: a child of this process whose command line boots a kernel
 * (-kernel) and names sockdir; or 0. libguestfs's other children (QEMU
 * asked about its features, the recovery process) are not it. */
static pid_t find_appliance(const char *sockdir)
{
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    pid_t self = getpid(), found = 0;
    struct dirent *de;
    while (!found && (de = readdir(d))) {
        char *end = NULL;
        long pid = strtol(de->d_name, &end, 10);
        if (pid <= 0 || *end)
            continue;
        char path[64];
        _cleanup_free_ char *stat = NULL, *cmdline = NULL;
        size_t len = 0;
        snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
        if (al_read_file(path, 4096, &stat, NULL, NULL) < 0)
            continue;
        /* "pid (comm) state ppid ...": comm may hold spaces and parens */
        const char *p = strrchr(stat, ')');
        long ppid = 0;
        if (!p || sscanf(p + 1, " %*c %ld", &ppid) != 1 || ppid != (long)self)
            continue;
        snprintf(path, sizeof(path), "/proc/%ld/cmdline", pid);
        if (al_read_file(path, 64 * 1024, &cmdline, &len, NULL) < 0)
            continue;
        if (memmem(cmdline, len, sockdir, strlen(sockdir)) && memmem(cmdline, len, "-kernel", 7))
            found = (pid_t)pid;
    }
    closedir(d);
    return found;
}

static void *watch_main(void *data)
{
    struct watch *w = data;
    uint64_t seen_at = 0;
    pid_t seen = 0;
    pthread_mutex_lock(&w->lock);
    while (!w->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += WATCH_INTERVAL_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&w->cond, &w->lock, &ts);
        if (w->stop)
            break;
        pthread_mutex_unlock(&w->lock);
        pid_t pid = find_appliance(w->sockdir);
        uint64_t now = al_now_mono_ms();
        bool kill_it = false;
        if (pid > 0 && pid != seen) {
            seen = pid;
            seen_at = now;
        } else if (pid > 0 && now - seen_at >= (uint64_t)w->bound_s * 1000u) {
            kill_it = true;
        }
        pthread_mutex_lock(&w->lock);
        if (kill_it && !w->stop) {
            kill(pid, SIGKILL);
            w->killed = true;
            break;
        }
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

int appliance_launch(guestfs_h *g, int bound_s)
{
    if (bound_s <= 0)
        return guestfs_launch(g) < 0 ? -EIO : 0;
    /* made now if need be; it names the appliance's sockets on QEMU's
     * command line */
    _cleanup_free_ char *sockdir = guestfs_get_sockdir(g);
    if (!sockdir)
        return guestfs_launch(g) < 0 ? -EIO : 0;
    struct watch w = {.sockdir = sockdir, .bound_s = bound_s};
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.cond, NULL);
    pthread_t t;
    bool watching = pthread_create(&t, NULL, watch_main, &w) == 0;
    int r = guestfs_launch(g) < 0 ? -EIO : 0;
    if (watching) {
        pthread_mutex_lock(&w.lock);
        w.stop = true;
        pthread_cond_signal(&w.cond);
        pthread_mutex_unlock(&w.lock);
        pthread_join(t, NULL);
    }
    pthread_cond_destroy(&w.cond);
    pthread_mutex_destroy(&w.lock);
    if (w.killed)
        return -ETIMEDOUT;
    return r;
}
