/* A simulated hypervisor behind the backend ops table, for tests and
 * benchmarks that run the real engine: registered over the libvirt backend
 * type, its VMs "boot" in milliseconds and play the workload the job's
 * environment asks for:
 *
 *   FAKE=ok (default)  one line of output ("hello"), exit 0
 *   FAKE=fail:N        exit N
 *   FAKE=hang          output, then nothing until cancelled
 *   FAKE=timeout       the in-guest timeout fires
 *   FAKE=stream:N      N lines "line K" every FAKE_MS (default 20) ms, exit 0
 *   FAKE=error         the VM fails before booting (infrastructure error)
 *
 * A warm VM (request .warm) stops once connected, until assign() hands it a
 * job, which it then plays the same way.
 */
#ifndef AL_TEST_FAKE_BACKEND_H
#define AL_TEST_FAKE_BACKEND_H

#include <stddef.h>

#include "provision/backend.h"

extern const struct backend_ops fake_backend_ops;

/* Registers the fake as the libvirt backend type and resets the counters. */
void fake_backend_register(void);

/* Registers the fake also as backend type (enum backend_type), e.g. as
 * proxmox to give a pool a fallback tier; fake_backend_register() first. */
void fake_backend_register_type(int type);

/* VMs launched since registration. */
int fake_backend_launched(void);

/* Writes a minimal image manifest for name under state_dir, so the engine
 * accepts jobs for it. */
void fake_backend_write_image(const char *state_dir, const char *name);

/* VMs list_owned reports (for reconcile tests) and destroy_owned's count. */
extern struct owned_vm planted[4];
extern size_t n_planted;
extern int destroyed_owned;

/* Health of the backend named "a": 0 healthy, 1 unhealthy for now, 2 broken
 * (needs an operator: bad credentials). */
extern int fake_a_health;

/* Milliseconds between a fake VM's phases (default 5; 0 = next loop turn). */
extern unsigned fake_backend_delay_ms;

#endif
