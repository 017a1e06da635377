/* A simulated hypervisor for tests that run the real engine: registered
 * over the libvirt backend type, it "boots" in milliseconds and plays the
 * workload the job's environment asks for:
 *
 *   FAKE=ok (default)  one line of output, exit 0
 *   FAKE=fail:N        exit N
 *   FAKE=hang          output, then nothing until cancelled
 *   FAKE=stream:N      N lines "line K" every FAKE_MS (default 20) ms, exit 0
 *   FAKE=error         the VM fails before booting (infrastructure error)
 */
#ifndef AL_TEST_FAKE_BACKEND_H
#define AL_TEST_FAKE_BACKEND_H

#include <stddef.h>

/* Registers the fake as the libvirt backend type. */
void fake_backend_register(void);

/* VMs launched since registration. */
int fake_backend_launched(void);

/* Writes a minimal image manifest for name under state_dir, so the engine
 * accepts jobs for it. */
void fake_backend_write_image(const char *state_dir, const char *name);

#endif
