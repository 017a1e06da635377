/* Accelerator probe: is KVM really usable here?
 *
 * /dev/kvm can exist and still be unusable (nested virtualisation; on some
 * hosts QEMU aborts with "failed to set MSR 0x10a"). The only reliable test
 * is to start QEMU with -accel kvm and see it run, so that is what the probe
 * does, once: the result is cached for the process and in
 * <cache_dir>/accel-probe (keyed by the kernel boot id) for later processes.
 * When KVM does not work the caller uses TCG (libvirt domain type "qemu",
 * libguestfs force_tcg) and logs one clear warning.
 */
#ifndef AL_ACCEL_H
#define AL_ACCEL_H

#include <stdbool.h>

#include "runner/base/error.h"

enum accel_kind {
    ACCEL_KIND_KVM = 0,
    ACCEL_KIND_TCG,
};

struct accel_result {
    enum accel_kind kind;
    char reason[256]; /* why KVM is not used ("" when it is) */
    bool from_cache;
};

/* mode is enum accel_mode from config.h (auto, kvm, tcg). "kvm" fails with
 * -ENODEV when KVM does not work; "tcg" never probes. cache_dir may be NULL
 * (no file cache). The probe runs qemu-system-x86_64 (found on PATH) with
 * -accel kvm on a 64 KiB firmware that exits through isa-debug-exit: KVM
 * counts as working only when a vCPU really ran that code. Thread-safe. */
int accel_probe(int mode, const char *cache_dir, struct accel_result *ret, struct al_error **err);

/* Forgets the per-process result (tests; a daemon after a host change). */
void accel_probe_reset(void);

/* "kvm" or "qemu": the libvirt domain type for the result. */
const char *accel_domain_type(const struct accel_result *r);

#endif
