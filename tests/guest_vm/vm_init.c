/* PID 1 of the throwaway initramfs used by guest_vm_test.sh: mounts the
 * basics, loads the virtio modules, names the job port like udev would
 * (/dev/virtio-ports/org.agentlab.job) and starts agentlab-guest in warm
 * mode. The helper powers the VM off itself; this is only the fallback.
 * With agentlab.hostile=MODE on the kernel command line it plays a hostile
 * guest instead (hostile.c). Built static so the initramfs needs no loader. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hostile.h"

static void load(const char *name)
{
    char path[256];
    snprintf(path, sizeof(path), "/modules/%s.ko", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) < 0)
        if (errno != EEXIST)
            fprintf(stderr, "init: loading %s: %s\n", name, strerror(errno));
    if (fd >= 0)
        close(fd);
}

static int find_port(char *dev, size_t size)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    if (!d)
        return -1;
    struct dirent *e;
    int found = -1;
    while ((e = readdir(d)) && found < 0) {
        if (e->d_name[0] == '.')
            continue;
        char path[512], name[128] = "";
        snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, name, sizeof(name) - 1);
        close(fd);
        if (n > 0 && strncmp(name, "org.agentlab.job", 16) == 0) {
            snprintf(dev, size, "/dev/%s", e->d_name);
            found = 0;
        }
    }
    closedir(d);
    return found;
}

int main(void)
{
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    mount("tmpfs", "/run", "tmpfs", 0, "mode=0755");
    mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777");
    static const char *const mods[] = {
            "virtio_ring",           "virtio",     "virtio_pci_legacy_dev",
            "virtio_pci_modern_dev", "virtio_pci", "virtio_console"};
    for (size_t i = 0; i < sizeof(mods) / sizeof(mods[0]); i++)
        load(mods[i]);
    char dev[300];
    /* the port shows up once virtio_console has probed: well under a second
     * usually, but a TCG guest on a host loaded several times over its CPUs
     * has taken more than the 5 s this waited before (the job then failed
     * with "channel closed before the guest helper started") */
    int tries = 0;
    while (find_port(dev, sizeof(dev)) < 0 && tries++ < 6000) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (chown("/home/agentlab", 1000, 1000) < 0)
        fprintf(stderr, "init: chown /home/agentlab: %s\n", strerror(errno));
    mkdir("/dev/virtio-ports", 0755);
    if (symlink(dev, "/dev/virtio-ports/org.agentlab.job") < 0)
        fprintf(stderr, "init: no job port found\n");
    char cmdline[1024] = "";
    int cfd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (cfd >= 0) {
        ssize_t n = read(cfd, cmdline, sizeof(cmdline) - 1);
        cmdline[n > 0 ? n : 0] = '\0';
        close(cfd);
    }
    char *hostile = strstr(cmdline, "agentlab.hostile=");
    if (hostile) {
        char mode[32];
        if (sscanf(hostile + 17, "%31[a-z]", mode) == 1)
            hostile_run(mode, "/dev/virtio-ports/org.agentlab.job");
        sync();
        reboot(RB_POWER_OFF);
    }
    pid_t pid = fork();
    if (pid == 0) {
        char *const argv[] = {"agentlab-guest", NULL};
        char *const envp[] = {"PATH=/usr/local/bin:/usr/bin:/bin", NULL};
        execve("/usr/local/bin/agentlab-guest", argv, envp);
        _exit(127);
    }
    int status = 0;
    while (waitpid(-1, &status, 0) != pid)
        ;
    fprintf(stderr, "init: agentlab-guest returned %d; powering off\n", status);
    sync();
    reboot(RB_POWER_OFF);
    for (;;)
        pause();
}
