/* A simulated hypervisor behind the backend ops table, for tests and
 * benchmarks of the engine: VMs "boot" in a few milliseconds and end the way
 * their job's environment variable FAKE says:
 *   ok (default) | fail:<code> | error | hang | timeout
 * Register it with backend_register(BACKEND_LIBVIRT, &fake_backend_ops). */
#ifndef AL_TEST_FAKE_BACKEND_H
#define AL_TEST_FAKE_BACKEND_H

#include "provision/backend.h"

extern const struct backend_ops fake_backend_ops;

/* VMs list_owned reports (for reconcile tests) and destroy_owned's count. */
extern struct owned_vm planted[4];
extern size_t n_planted;
extern int destroyed_owned;

/* Milliseconds between a fake VM's phases (default 5; 0 = next loop turn). */
extern unsigned fake_backend_delay_ms;

#endif
