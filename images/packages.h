/* The package list of a Debian rootfs, read from its /var/lib/dpkg/status,
 * for the image manifest. */
#ifndef AL_IMAGES_PACKAGES_H
#define AL_IMAGES_PACKAGES_H

#include <stddef.h>

#include "images/catalog.h"
#include "runner/base/error.h"

#define DPKG_STATUS_MAX_BYTES (64u << 20)
#define DPKG_MAX_PACKAGES     20000

/* Parses dpkg status text: packages whose Status is "install ok installed",
 * sorted by name (Package:Architecture for foreign architectures). */
int dpkg_status_parse(const char *text, struct image_package **ret, size_t *ret_n,
                      struct al_error **err);

void image_packages_free(struct image_package *v, size_t n);

#endif
