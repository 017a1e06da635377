/* Importing an image built elsewhere: a kernel, an initrd and optionally a
 * qcow2 disk become a catalogue entry like a built one (manifest written
 * last, renamed into place). With no disk an empty one is created, for
 * guests that live entirely in their initramfs. */
#ifndef AL_IMAGES_IMPORT_H
#define AL_IMAGES_IMPORT_H

#include <stdbool.h>
#include <stdint.h>

#include "runner/base/error.h"

struct image_import {
    const char *name;
    const char *kernel;
    const char *initrd;
    const char *disk;    /* a qcow2 file, or NULL for an empty one */
    uint64_t empty_size; /* virtual size of the empty disk; 0 = 64 MiB */
    const char *cmdline; /* kernel command line */
    bool replace;        /* replace an existing image of that name */
};

/* Blocking. Refuses an existing name unless replace, and a disk that is not
 * qcow2. */
int image_import(const char *state_dir, const struct image_import *imp, struct al_error **err);

#endif
