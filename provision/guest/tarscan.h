/* A streaming scanner for tar archives (ustar, GNU and pax headers).
 *
 * It never writes anything: it follows the stream block by block, counts the
 * members and, in strict mode, refuses members that must not be unpacked
 * into a work dir. The helper runs every byte of a WORKDIR stream through it
 * before the bytes reach `tar -x`, and counts artifact members with it.
 *
 * Strict mode refuses: absolute names, ".." components, symlinks whose target
 * is absolute or climbs out of the archive root, hard links with such names,
 * device nodes, FIFOs, sparse and multi-volume entries, GNU sparse pax keys,
 * bad checksums, metadata over 64 KiB, and non-zero data sizes on links and
 * directories (so that this scanner and tar can never disagree about where
 * the next header starts).
 */
#ifndef AL_GUEST_TARSCAN_H
#define AL_GUEST_TARSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runner/base/error.h"

#define TAR_SCAN_MAX_META (64u * 1024u)

struct tar_scan {
    bool strict;
    int state;
    uint8_t block[512];
    size_t block_len;
    uint64_t skip; /* data and padding bytes left to pass over */
    char meta_type;
    char *meta;
    size_t meta_len, meta_size;
    char *next_path; /* from pax 'x' or GNU 'L', for the next member */
    char *next_link; /* from pax 'x' or GNU 'K' */
    bool has_next_size;
    uint64_t next_size;
    unsigned zero_blocks;
    uint64_t members;
};

/* Starts a scan. strict = validate member names and types for unpacking. */
void tar_scan_init(struct tar_scan *s, bool strict);

/* Consumes n bytes. Returns 0, -EPERM for a refused member or -EPROTO for a
 * stream that is not a well-formed tar; err then says which member and why.
 * After a failure every later call fails the same way. */
int tar_scan_feed(struct tar_scan *s, const uint8_t *data, size_t n, struct al_error **err);

/* True once the end-of-archive marker (two zero blocks) was seen. */
bool tar_scan_finished(const struct tar_scan *s);

/* Frees internal buffers. Accepts NULL. */
void tar_scan_free(struct tar_scan *s);

#endif
