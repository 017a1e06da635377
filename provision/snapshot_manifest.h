/* The manifest of a memory snapshot (provision/libvirt_snapshot.c): what the
 * saved state was made from and under, and the paths its saved domain XML
 * refers to. A snapshot is used only when every recorded condition matches
 * the present one; anything else makes it stale.
 *
 * Pure: no I/O, so the parse and the comparison are unit-tested alone. */
#ifndef AL_SNAPSHOT_MANIFEST_H
#define AL_SNAPSHOT_MANIFEST_H

#include <stdint.h>

#include "runner/base/error.h"

#define SNAPSHOT_MANIFEST_SCHEMA 1
#define SNAPSHOT_MANIFEST_MAX    (64u * 1024u)

struct snapshot_manifest {
    /* the conditions: all must match */
    char *image;              /* image name */
    char *image_id;           /* the image's checksum and build identity */
    uint64_t qemu_version;    /* virConnectGetVersion(): major*1e6 + minor*1e3 + micro */
    uint64_t libvirt_version; /* virConnectGetLibVersion() */
    char *machine;            /* the machine type QEMU ran ("pc-i440fx-8.2") */
    char *accel;              /* "kvm" or "tcg" */
    char *cpu_model;          /* the host CPU model (libvirt capabilities) */
    char *helper;             /* agentlab's version: the protocol the saved helper speaks */
    int cpus;
    uint64_t memory; /* bytes */
    /* what the saved domain is */
    char *domain; /* its name */
    char *uuid;
    /* paths in the saved XML, replaced on every restore */
    char *disk_path;
    char *channel_path;
    char *console_log;
    char *seed_path; /* "" when the domain had no seed disk */
    /* informational */
    uint64_t state_bytes;
    uint64_t base_bytes;
    uint64_t made_ms; /* boot + save, milliseconds */
};

/* Parses a manifest (at most SNAPSHOT_MANIFEST_MAX bytes) into *ret, which
 * the caller clears. Every field is required. Returns 0 or -EINVAL/-ENOMEM
 * with err naming the field. */
int snapshot_manifest_parse(const char *json, size_t len, struct snapshot_manifest *ret,
                            struct al_error **err);

/* The manifest as JSON, a new string. Returns 0 or -ENOMEM. */
int snapshot_manifest_format(const struct snapshot_manifest *m, char **ret_json);

/* Compares the conditions of a snapshot (have) with the present ones
 * (want). Returns 0 when the snapshot may be used, else a negative value
 * with a short reason ("the image changed", "QEMU changed: 8002000 ->
 * 8002001", ...) in why. */
int snapshot_manifest_check(const struct snapshot_manifest *have,
                            const struct snapshot_manifest *want, char *why, size_t size);

/* Frees the strings; the struct is zeroed. Accepts a zeroed struct. */
void snapshot_manifest_clear(struct snapshot_manifest *m);

#endif
