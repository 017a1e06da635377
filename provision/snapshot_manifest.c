#include "provision/snapshot_manifest.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/buf.h"
#include "runner/base/json_tree.h"
#include "runner/base/util.h"

#define STR_MAX 4096

struct str_field {
    const char *key;
    size_t off;
};

#define SF(f)                                     \
    {                                             \
#f, offsetof(struct snapshot_manifest, f) \
    }
static const struct str_field str_fields[] = {
        SF(image),  SF(image_id), SF(machine),   SF(accel),        SF(cpu_model),   SF(helper),
        SF(domain), SF(uuid),     SF(disk_path), SF(channel_path), SF(console_log), SF(seed_path),
};

struct u64_field {
    const char *key;
    size_t off;
};

#define UF(f)                                     \
    {                                             \
#f, offsetof(struct snapshot_manifest, f) \
    }
static const struct u64_field u64_fields[] = {
        UF(qemu_version), UF(libvirt_version), UF(memory),
        UF(state_bytes),  UF(base_bytes),      UF(made_ms),
};

static char **str_at(struct snapshot_manifest *m, size_t off)
{
    return (char **)((char *)m + off);
}

static uint64_t *u64_at(struct snapshot_manifest *m, size_t off)
{
    return (uint64_t *)((char *)m + off);
}

int snapshot_manifest_parse(const char *json, size_t len, struct snapshot_manifest *ret,
                            struct al_error **err)
{
    _cleanup_(yajl_tree_freep) yajl_val root = NULL;
    int r = al_json_parse(json, len, SNAPSHOT_MANIFEST_MAX, 4, 64, "snapshot manifest", &root, err);
    if (r < 0)
        return r;
    if (!YAJL_IS_OBJECT(root))
        return al_error_set(err, EINVAL, "snapshot manifest: not an object");
    int64_t schema = 0;
    r = al_json_get_int(root, "schema", "", 1, 1000, true, &schema, err);
    if (r < 0)
        return r;
    if (schema != SNAPSHOT_MANIFEST_SCHEMA)
        return al_error_set(err, EINVAL, "snapshot manifest: schema %" PRId64 ", not %d", schema,
                            SNAPSHOT_MANIFEST_SCHEMA);
    struct snapshot_manifest m = {0};
    for (size_t i = 0; i < ARRAY_SIZE(str_fields) && r == 0; i++) {
        /* seed_path is "" for a domain without a seed disk */
        bool required = !streq(str_fields[i].key, "seed_path");
        r = al_json_get_string(root, str_fields[i].key, "", STR_MAX, required, al_json_check_line,
                               str_at(&m, str_fields[i].off), err);
        if (r == 0 && !*str_at(&m, str_fields[i].off) &&
            !(*str_at(&m, str_fields[i].off) = strdup("")))
            r = al_error_set(err, ENOMEM, "snapshot manifest");
    }
    for (size_t i = 0; i < ARRAY_SIZE(u64_fields) && r == 0; i++) {
        int64_t v = 0;
        r = al_json_get_int(root, u64_fields[i].key, "", 0, INT64_MAX, true, &v, err);
        if (r == 0)
            *u64_at(&m, u64_fields[i].off) = (uint64_t)v;
    }
    int64_t cpus = 0;
    if (r == 0)
        r = al_json_get_int(root, "cpus", "", 1, 4096, true, &cpus, err);
    if (r < 0) {
        snapshot_manifest_clear(&m);
        return r;
    }
    m.cpus = (int)cpus;
    *ret = m;
    return 0;
}

static int put_json_string(struct al_buf *b, const char *s)
{
    int r = al_buf_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; r == 0 && *p; p++) {
        if (*p == '"' || *p == '\\')
            r = al_buf_printf(b, "\\%c", *p);
        else if (*p < 0x20)
            r = al_buf_printf(b, "\\u%04x", *p);
        else
            r = al_buf_append(b, p, 1);
    }
    return r < 0 ? r : al_buf_puts(b, "\"");
}

int snapshot_manifest_format(const struct snapshot_manifest *m, char **ret_json)
{
    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    struct snapshot_manifest *mm = (struct snapshot_manifest *)m;
    int r = al_buf_printf(&b, "{\n  \"schema\": %d,\n  \"cpus\": %d", SNAPSHOT_MANIFEST_SCHEMA,
                          m->cpus);
    for (size_t i = 0; i < ARRAY_SIZE(str_fields) && r == 0; i++) {
        const char *v = *str_at(mm, str_fields[i].off);
        r = al_buf_printf(&b, ",\n  \"%s\": ", str_fields[i].key);
        if (r == 0)
            r = put_json_string(&b, v ? v : "");
    }
    for (size_t i = 0; i < ARRAY_SIZE(u64_fields) && r == 0; i++)
        r = al_buf_printf(&b, ",\n  \"%s\": %" PRIu64, u64_fields[i].key,
                          *u64_at(mm, u64_fields[i].off));
    if (r == 0)
        r = al_buf_puts(&b, "\n}\n");
    if (r < 0)
        return -ENOMEM;
    *ret_json = al_buf_steal(&b);
    return *ret_json ? 0 : -ENOMEM;
}

static bool str_same(const char *a, const char *b)
{
    return streq(a ? a : "", b ? b : "");
}

int snapshot_manifest_check(const struct snapshot_manifest *have,
                            const struct snapshot_manifest *want, char *why, size_t size)
{
    if (!str_same(have->image, want->image))
        snprintf(why, size, "made from image %s, not %s", have->image, want->image);
    else if (!str_same(have->image_id, want->image_id))
        snprintf(why, size, "the image changed since the snapshot was made");
    else if (have->qemu_version != want->qemu_version)
        snprintf(why, size, "QEMU changed: %" PRIu64 " -> %" PRIu64, have->qemu_version,
                 want->qemu_version);
    else if (have->libvirt_version != want->libvirt_version)
        snprintf(why, size, "libvirt changed: %" PRIu64 " -> %" PRIu64, have->libvirt_version,
                 want->libvirt_version);
    else if (want->machine && *want->machine && !str_same(have->machine, want->machine))
        snprintf(why, size, "machine type changed: %s -> %s", have->machine, want->machine);
    else if (!str_same(have->accel, want->accel))
        snprintf(why, size, "accelerator changed: %s -> %s", have->accel, want->accel);
    else if (!str_same(have->cpu_model, want->cpu_model))
        snprintf(why, size, "host CPU changed: %s -> %s", have->cpu_model, want->cpu_model);
    else if (!str_same(have->helper, want->helper))
        snprintf(why, size, "agentlab changed: %s -> %s", have->helper, want->helper);
    else if (have->cpus != want->cpus || have->memory != want->memory)
        snprintf(why, size, "size %d vCPU/%" PRIu64 " MiB, not %d/%" PRIu64, have->cpus,
                 have->memory >> 20, want->cpus, want->memory >> 20);
    else
        return 0;
    return -ESTALE;
}

void snapshot_manifest_clear(struct snapshot_manifest *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < ARRAY_SIZE(str_fields); i++)
        free(*str_at(m, str_fields[i].off));
    *m = (struct snapshot_manifest){0};
}
