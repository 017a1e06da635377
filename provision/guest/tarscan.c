#include "provision/guest/tarscan.h"

#include <string.h>

enum { SCAN_HEADER, SCAN_SKIP, SCAN_META, SCAN_END, SCAN_FAILED };

#define BLOCK 512u

void tar_scan_init(struct tar_scan *s, bool strict)
{
    memset(s, 0, sizeof(*s));
    s->strict = strict;
    s->state = SCAN_HEADER;
}

static void clear_next(struct tar_scan *s)
{
    free(s->next_path);
    free(s->next_link);
    s->next_path = NULL;
    s->next_link = NULL;
    s->has_next_size = false;
    s->next_size = 0;
}

void tar_scan_free(struct tar_scan *s)
{
    if (!s)
        return;
    clear_next(s);
    free(s->meta);
    s->meta = NULL;
}

bool tar_scan_finished(const struct tar_scan *s)
{
    return s->state == SCAN_END;
}

/* Member names come from the archive: messages cut them short. */
static int fail(struct tar_scan *s, struct al_error **err, int code, const char *what,
                const char *name)
{
    s->state = SCAN_FAILED;
    if (name)
        return al_error_set(err, code, "tar member '%.200s': %s", name, what);
    return al_error_set(err, code, "not a valid tar stream: %s", what);
}

#define REFUSE(s, err, what, name) fail(s, err, EPERM, what, name)
#define MALFORMED(s, err, what)    fail(s, err, EPROTO, what, NULL)
#define NOMEM(s, err)              fail(s, err, ENOMEM, "out of memory", NULL)

/* Octal numeric field: optional leading spaces, at least one digit, then
 * only NUL or space padding. Base-256 (first byte 0x80) for large values. */
static bool parse_numeric(const uint8_t *f, size_t n, uint64_t *ret)
{
    if (n == 0)
        return false;
    if (f[0] & 0x80) {
        if (f[0] != 0x80)
            return false; /* negative or absurdly large */
        uint64_t v = 0;
        for (size_t i = 1; i < n; i++) {
            if (v > (UINT64_MAX >> 8))
                return false;
            v = v << 8 | f[i];
        }
        *ret = v;
        return true;
    }
    size_t i = 0;
    while (i < n && f[i] == ' ')
        i++;
    size_t digits = 0;
    uint64_t v = 0;
    for (; i < n && f[i] >= '0' && f[i] <= '7'; i++, digits++) {
        if (v > (UINT64_MAX >> 3))
            return false;
        v = v << 3 | (uint64_t)(f[i] - '0');
    }
    if (digits == 0)
        return false;
    for (; i < n; i++)
        if (f[i] != '\0' && f[i] != ' ')
            return false;
    *ret = v;
    return true;
}

static bool checksum_ok(const uint8_t *b)
{
    uint64_t want;
    if (!parse_numeric(b + 148, 8, &want))
        return false;
    uint64_t sum_u = 0;
    int64_t sum_s = 0;
    for (size_t i = 0; i < BLOCK; i++) {
        uint8_t c = (i >= 148 && i < 156) ? ' ' : b[i];
        sum_u += c;
        sum_s += (int8_t)c;
    }
    return sum_u == want || (sum_s >= 0 && (uint64_t)sum_s == want);
}

static bool all_zero(const uint8_t *b)
{
    for (size_t i = 0; i < BLOCK; i++)
        if (b[i])
            return false;
    return true;
}

static char *field_dup(const uint8_t *f, size_t n)
{
    size_t len = strnlen((const char *)f, n);
    char *s = malloc(len + 1);
    if (!s)
        return NULL;
    memcpy(s, f, len);
    s[len] = '\0';
    return s;
}

/* A name that is safe to create below the archive root. */
static bool name_is_safe(const char *name)
{
    if (name[0] == '\0' || name[0] == '/')
        return false;
    const char *p = name;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.')
            return false;
        p += len;
        while (*p == '/')
            p++;
    }
    return true;
}

/* Depth of the directory holding `name` below the root, ignoring "." and
 * empty components; name is already known to be safe. */
static long parent_depth(const char *name)
{
    long depth = 0;
    const char *p = name;
    while (*p) {
        const char *slash = strchr(p, '/');
        if (!slash)
            break; /* the last component is the entry itself */
        size_t len = (size_t)(slash - p);
        if (len > 0 && !(len == 1 && p[0] == '.'))
            depth++;
        p = slash + 1;
    }
    return depth;
}

/* A relative symlink target that, resolved lexically from the link's own
 * directory, stays inside the root. */
static bool link_target_stays_inside(const char *link_name, const char *target)
{
    if (target[0] == '\0' || target[0] == '/')
        return false;
    long depth = parent_depth(link_name);
    const char *p = target;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') {
            if (--depth < 0)
                return false;
        } else if (len > 0 && !(len == 1 && p[0] == '.')) {
            depth++;
        }
        p += len;
        while (*p == '/')
            p++;
    }
    return true;
}

/* Walks the "LEN key=value\n" records of a pax header and keeps path,
 * linkpath and size for the next member. */
static int pax_records(struct tar_scan *s, struct al_error **err, bool global)
{
    const char *p = s->meta;
    size_t left = s->meta_len;
    while (left > 0) {
        size_t i = 0, reclen = 0;
        while (i < left && i < 10 && p[i] >= '0' && p[i] <= '9') {
            reclen = reclen * 10 + (size_t)(p[i] - '0');
            i++;
        }
        if (i == 0 || i >= left || p[i] != ' ' || reclen <= i + 1 || reclen > left ||
            p[reclen - 1] != '\n')
            return MALFORMED(s, err, "bad pax record");
        const char *key = p + i + 1;
        const char *end = p + reclen - 1; /* the '\n' */
        const char *eq = memchr(key, '=', (size_t)(end - key));
        if (!eq || eq == key)
            return MALFORMED(s, err, "bad pax record");
        size_t keylen = (size_t)(eq - key);
        const char *val = eq + 1;
        size_t vlen = (size_t)(end - val);

        bool is_path = keylen == 4 && memcmp(key, "path", 4) == 0;
        bool is_link = keylen == 8 && memcmp(key, "linkpath", 8) == 0;
        bool is_size = keylen == 4 && memcmp(key, "size", 4) == 0;
        bool is_sparse = keylen >= 10 && memcmp(key, "GNU.sparse", 10) == 0;
        if (s->strict && (is_sparse || (global && (is_path || is_link || is_size))))
            return fail(s, err, EPERM, "pax keyword not allowed in a work dir", NULL);
        if (!global && (is_path || is_link)) {
            if (memchr(val, '\0', vlen))
                return MALFORMED(s, err, "NUL in pax path");
            char **slot = is_path ? &s->next_path : &s->next_link;
            if (*slot && s->strict)
                return MALFORMED(s, err, "conflicting long names");
            char *v = malloc(vlen + 1);
            if (!v)
                return NOMEM(s, err);
            memcpy(v, val, vlen);
            v[vlen] = '\0';
            free(*slot);
            *slot = v;
        } else if (!global && is_size) {
            uint64_t v = 0;
            if (vlen == 0 || vlen > 19)
                return MALFORMED(s, err, "bad pax size");
            for (size_t k = 0; k < vlen; k++) {
                if (val[k] < '0' || val[k] > '9')
                    return MALFORMED(s, err, "bad pax size");
                v = v * 10 + (uint64_t)(val[k] - '0');
            }
            s->has_next_size = true;
            s->next_size = v;
        }
        p += reclen;
        left -= reclen;
    }
    return 0;
}

static int finish_meta(struct tar_scan *s, struct al_error **err)
{
    int r = 0;
    switch (s->meta_type) {
    case 'x':
        r = pax_records(s, err, false);
        break;
    case 'g':
        r = pax_records(s, err, true);
        break;
    case 'L':
    case 'K': {
        char **slot = s->meta_type == 'L' ? &s->next_path : &s->next_link;
        if (*slot && s->strict)
            return MALFORMED(s, err, "conflicting long names");
        char *v = field_dup((const uint8_t *)s->meta, s->meta_len);
        if (!v)
            return NOMEM(s, err);
        free(*slot);
        *slot = v;
        break;
    }
    }
    free(s->meta);
    s->meta = NULL;
    s->meta_len = s->meta_size = 0;
    return r;
}

static int set_skip(struct tar_scan *s, uint64_t size, struct al_error **err)
{
    if (size > UINT64_MAX - (BLOCK - 1))
        return MALFORMED(s, err, "size out of range");
    s->skip = (size + BLOCK - 1) / BLOCK * BLOCK;
    s->state = s->skip ? SCAN_SKIP : SCAN_HEADER;
    return 0;
}

static int check_member(struct tar_scan *s, char type, const char *name, const char *link,
                        const char *raw_name, uint64_t size, struct al_error **err)
{
    switch (type) {
    case '0':
    case '\0':
    case '7':
        break;
    case '5':
        if (size != 0)
            return REFUSE(s, err, "directory with data", name);
        break;
    case '1':
    case '2':
        if (size != 0)
            return REFUSE(s, err, "link with data", name);
        break;
    case '3':
    case '4':
        return REFUSE(s, err, "device node", name);
    case '6':
        return REFUSE(s, err, "FIFO", name);
    default:
        return REFUSE(s, err, "unsupported entry type", name);
    }
    if (!name_is_safe(name) || !name_is_safe(raw_name))
        return REFUSE(s, err, "absolute name or '..' component", name);
    if (type == '2' && !link_target_stays_inside(name, link))
        return REFUSE(s, err, "symlink pointing outside the work dir", name);
    if (type == '1' && !name_is_safe(link))
        return REFUSE(s, err, "hard link to a name outside the work dir", name);
    return 0;
}

static int handle_header(struct tar_scan *s, struct al_error **err)
{
    const uint8_t *b = s->block;
    if (all_zero(b)) {
        if (++s->zero_blocks == 2)
            s->state = SCAN_END;
        return 0;
    }
    if (s->zero_blocks)
        return MALFORMED(s, err, "lone zero block");
    if (!checksum_ok(b))
        return MALFORMED(s, err, "bad header checksum");
    bool posix = memcmp(b + 257, "ustar\0", 6) == 0;
    bool gnu = memcmp(b + 257, "ustar  \0", 8) == 0;
    if (!posix && !gnu)
        return MALFORMED(s, err, "not a ustar header");
    uint64_t size;
    if (!parse_numeric(b + 124, 12, &size))
        return MALFORMED(s, err, "bad size field");
    char type = (char)b[156];

    if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
        if (size > TAR_SCAN_MAX_META)
            return MALFORMED(s, err, "metadata header too large");
        s->meta_type = type;
        s->meta_size = (size_t)size;
        s->meta_len = 0;
        s->meta = malloc(s->meta_size + 1);
        if (!s->meta)
            return NOMEM(s, err);
        s->skip = (BLOCK - size % BLOCK) % BLOCK; /* padding after the metadata */
        s->state = SCAN_META;
        if (s->meta_size == 0) {
            int r = finish_meta(s, err);
            if (r < 0)
                return r;
            return set_skip(s, 0, err);
        }
        return 0;
    }

    /* a real member */
    int r = 0;
    char *raw = NULL;
    if (posix && b[345]) {
        char prefix[156], name[101];
        memcpy(prefix, b + 345, 155);
        prefix[155] = '\0';
        memcpy(name, b, 100);
        name[100] = '\0';
        size_t pl = strlen(prefix), nl = strlen(name);
        raw = malloc(pl + 1 + nl + 1);
        if (raw) {
            memcpy(raw, prefix, pl);
            raw[pl] = '/';
            memcpy(raw + pl + 1, name, nl + 1);
        }
    } else {
        raw = field_dup(b, 100);
    }
    char *raw_link = field_dup(b + 157, 100);
    if (!raw || !raw_link) {
        r = NOMEM(s, err);
        goto out;
    }
    if (s->has_next_size)
        size = s->next_size;
    if (s->strict) {
        const char *name = s->next_path ? s->next_path : raw;
        const char *link = s->next_link ? s->next_link : raw_link;
        r = check_member(s, type, name, link, raw, size, err);
        if (r < 0)
            goto out;
    }
    s->members++;
    r = set_skip(s, size, err);
out:
    free(raw);
    free(raw_link);
    clear_next(s);
    s->meta_type = 0;
    return r;
}

int tar_scan_feed(struct tar_scan *s, const uint8_t *data, size_t n, struct al_error **err)
{
    while (n > 0) {
        switch (s->state) {
        case SCAN_FAILED:
            return al_error_set(err, EPROTO, "tar stream already refused");
        case SCAN_END:
            return 0; /* tar stops reading at the end marker too */
        case SCAN_SKIP: {
            size_t take = s->skip < n ? (size_t)s->skip : n;
            s->skip -= take;
            data += take;
            n -= take;
            if (s->skip == 0)
                s->state = SCAN_HEADER;
            break;
        }
        case SCAN_META: {
            size_t want = s->meta_size - s->meta_len;
            size_t take = want < n ? want : n;
            memcpy(s->meta + s->meta_len, data, take);
            s->meta_len += take;
            data += take;
            n -= take;
            if (s->meta_len == s->meta_size) {
                s->meta[s->meta_len] = '\0';
                uint64_t pad = s->skip;
                int r = finish_meta(s, err);
                if (r < 0)
                    return r;
                s->skip = pad;
                s->state = pad ? SCAN_SKIP : SCAN_HEADER;
            }
            break;
        }
        case SCAN_HEADER: {
            size_t want = BLOCK - s->block_len;
            size_t take = want < n ? want : n;
            memcpy(s->block + s->block_len, data, take);
            s->block_len += take;
            data += take;
            n -= take;
            if (s->block_len == BLOCK) {
                s->block_len = 0;
                int r = handle_header(s, err);
                if (r < 0)
                    return r;
            }
            break;
        }
        }
    }
    return 0;
}
