/* Accelerator probe: can KVM really run the Linux guests jobs need?
 *
 * /dev/kvm can exist and still be unusable. Two ways are known from nested
 * hosts: QEMU aborts at start ("failed to set MSR 0x10a"), or (the nested
 * kvm-pvm module) a vCPU runs a few instructions of real-mode code but a Linux
 * kernel hangs forever before printing a line. So the probe boots a real
 * kernel under KVM, with the machine types and CPU model that job domains and
 * libguestfs appliances use, and requires it to get through its whole boot
 * (banner, then the expected panic for lack of a root file system, then QEMU
 * exits by itself through -no-reboot) within a deadline. Anything else means
 * TCG, with the reason.
 *
 * The verdict is cached for the process and in <cache_dir>/accel-probe, keyed
 * by the kernel boot id and by what was probed (the kernel file, the QEMU
 * binary and the device), so a later process on the same boot does not pay
 * for it again. A guest that shows no sign of life under KVM although the
 * probe passed (accel_mark_kvm_unusable) turns the verdict to TCG for the
 * rest of the boot.
 */
#ifndef AL_ACCEL_H
#define AL_ACCEL_H

#include <stdbool.h>

#include "runner/base/error.h"

/* What a backend is configured to use. */
enum accel_mode {
    ACCEL_AUTO = 0, /* probe; KVM when it works, TCG otherwise */
    ACCEL_KVM,      /* KVM or fail with the reason */
    ACCEL_TCG,      /* never probe */
};

enum accel_kind {
    ACCEL_KIND_KVM = 0,
    ACCEL_KIND_TCG,
};

struct accel_result {
    enum accel_kind kind;
    char reason[256]; /* why KVM is not used ("" when it is) */
    bool from_cache;  /* decided earlier (this process or the cache file) */
};

struct accel_probe_opts {
    int mode;               /* enum accel_mode */
    const char *cache_dir;  /* for the cache file; NULL = none */
    const char *kvm_device; /* NULL = /dev/kvm */
    /* the Linux kernel to boot; NULL = /boot/vmlinuz-$(uname -r), else the
     * newest readable /boot/vmlinuz-* */
    const char *kernel;
    int timeout_ms; /* per boot; 0 = 20 s */
};

/* Decides once per process (and per boot with a cache dir): KVM or TCG.
 * mode ACCEL_KVM fails with -ENODEV and the reason when KVM does not work;
 * ACCEL_TCG never probes. The probe runs qemu-system-x86_64 from PATH.
 * Blocks for as long as the probe runs (about a second per machine type
 * with a working KVM, the deadline with a hanging one). Thread-safe. */
int accel_probe(const struct accel_probe_opts *o, struct accel_result *ret, struct al_error **err);

/* Records that a guest started under KVM showed no sign of life: from now
 * on (this process, and through the cache file the rest of this boot)
 * probes answer TCG with reason. Returns true the first time (the caller
 * logs it once). Thread-safe. */
bool accel_mark_kvm_unusable(const char *cache_dir, const char *reason);

/* Forgets the per-process result (tests; a daemon after a host change). */
void accel_probe_reset(void);

/* "kvm" or "qemu": the libvirt domain type for the result. */
const char *accel_domain_type(const struct accel_result *r);

/* "kvm" or "tcg". */
const char *accel_kind_name(enum accel_kind k);

#endif
