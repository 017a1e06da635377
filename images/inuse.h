/* Is a golden image in use by a VM? The libvirt half of the check behind
 * `agentlab image rm` (the other half is the .inuse.<pid> files, catalog.h).
 *
 * A domain uses an image when its XML names a file inside the image
 * directory (disk, kernel, initrd, a backing store) or one of its disks is a
 * qcow2 overlay whose backing chain reaches into the directory. Inactive
 * defined domains count too: starting them would need the image. */
#ifndef AL_IMAGES_INUSE_H
#define AL_IMAGES_INUSE_H

#include <stdbool.h>

#include "runner/base/error.h"

/* Names of the domains on uri that use files in dir (a NULL-terminated
 * array, empty when none). Fails when libvirt cannot be reached. */
int inuse_libvirt_domains(const char *uri, const char *dir, char ***ret_names,
                          struct al_error **err);

/* Every file path a domain XML refers to (file='...' attributes and the
 * <kernel>, <initrd> and <loader> elements), XML entities decoded, as a
 * NULL-terminated array. -ENOMEM only. */
int inuse_domain_xml_paths(const char *xml, char ***ret_paths);

/* The backing file of a qcow2 image, made absolute against the image's
 * directory; *ret_backing is NULL when the file is not qcow2 or has no
 * backing file. */
int inuse_qcow2_backing(const char *path, char **ret_backing, struct al_error **err);

/* True when path (canonicalised when it exists) lies inside dir. */
bool inuse_path_is_under(const char *path, const char *dir);

#endif
