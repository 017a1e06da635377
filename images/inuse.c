#include "images/inuse.h"

#include <errno.h>
#include <fcntl.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/util.h"

#define MAX_BACKING_DEPTH 16
#define MAX_BACKING_NAME  4096

static int strv_push(char ***v, size_t *n, char *s)
{
    if (!s)
        return -ENOMEM;
    char **nv = realloc(*v, (*n + 2) * sizeof(char *));
    if (!nv) {
        free(s);
        return -ENOMEM;
    }
    nv[(*n)++] = s;
    nv[*n] = NULL;
    *v = nv;
    return 0;
}

/* Decodes the five predefined XML entities and numeric references. */
static char *xml_decode(const char *s, size_t len)
{
    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    static const struct {
        const char *ent;
        char c;
    } ents[] = {{"&apos;", '\''}, {"&quot;", '"'}, {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}};
    for (size_t i = 0; i < len;) {
        if (s[i] == '&') {
            bool done = false;
            for (size_t k = 0; k < ARRAY_SIZE(ents) && !done; k++) {
                size_t el = strlen(ents[k].ent);
                if (i + el <= len && memcmp(s + i, ents[k].ent, el) == 0) {
                    if (al_buf_append(&b, &ents[k].c, 1) < 0)
                        return NULL;
                    i += el;
                    done = true;
                }
            }
            if (!done && i + 3 < len && s[i + 1] == '#') {
                const char *semi = memchr(s + i, ';', len - i);
                char num[16];
                size_t nl = semi ? (size_t)(semi - (s + i + 2)) : 0;
                if (semi && nl > 0 && nl < sizeof(num)) {
                    memcpy(num, s + i + 2, nl);
                    num[nl] = '\0';
                    char *end = NULL;
                    errno = 0;
                    unsigned long v =
                            num[0] == 'x' ? strtoul(num + 1, &end, 16) : strtoul(num, &end, 10);
                    if (errno == 0 && end && *end == '\0' && v > 0 && v < 128) {
                        char c = (char)v;
                        if (al_buf_append(&b, &c, 1) < 0)
                            return NULL;
                        i = (size_t)(semi - s) + 1;
                        done = true;
                    }
                }
            }
            if (done)
                continue;
        }
        if (al_buf_append(&b, s + i, 1) < 0)
            return NULL;
        i++;
    }
    return al_buf_steal(&b);
}

int inuse_domain_xml_paths(const char *xml, char ***ret_paths)
{
    char **v = calloc(1, sizeof(char *));
    size_t n = 0;
    if (!v)
        return -ENOMEM;
    /* attributes: file='x' or file="x" (libvirt writes single quotes) */
    for (const char *p = xml; (p = strstr(p, "file=")); p += 5) {
        if (p > xml && p[-1] != ' ' && p[-1] != '\t' && p[-1] != '\n')
            continue;
        char q = p[5];
        if (q != '\'' && q != '"')
            continue;
        const char *start = p + 6;
        const char *end = strchr(start, q);
        if (!end)
            break;
        if (strv_push(&v, &n, xml_decode(start, (size_t)(end - start))) < 0)
            goto oom;
    }
    static const char *const elems[] = {"kernel", "initrd", "loader", "nvram"};
    for (size_t k = 0; k < ARRAY_SIZE(elems); k++) {
        char open_tag[32], close_tag[32];
        snprintf(open_tag, sizeof(open_tag), "<%s", elems[k]);
        snprintf(close_tag, sizeof(close_tag), "</%s>", elems[k]);
        for (const char *p = xml; (p = strstr(p, open_tag)); p++) {
            const char *gt = strchr(p, '>');
            if (!gt)
                break;
            char after = p[strlen(open_tag)];
            if ((after != '>' && after != ' ') || gt[-1] == '/')
                continue;
            const char *end = strstr(gt + 1, close_tag);
            if (!end)
                break;
            if (end > gt + 1 && strv_push(&v, &n, xml_decode(gt + 1, (size_t)(end - gt - 1))) < 0)
                goto oom;
        }
    }
    *ret_paths = v;
    return 0;
oom:
    strv_free(v);
    return -ENOMEM;
}

static uint64_t be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int inuse_qcow2_backing(const char *path, char **ret_backing, struct al_error **err)
{
    *ret_backing = NULL;
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        return al_error_set_errno(err, errno, "opening %s", path);
    }
    unsigned char hdr[20];
    ssize_t k = pread(fd, hdr, sizeof(hdr), 0);
    if (k < (ssize_t)sizeof(hdr) || memcmp(hdr, "QFI\xfb", 4) != 0)
        return 0;
    uint64_t off = be64(hdr + 8);
    uint32_t len = be32(hdr + 16);
    if (off == 0 || len == 0)
        return 0;
    if (len > MAX_BACKING_NAME || off > INT64_MAX)
        return al_error_set(err, EINVAL, "%s: implausible qcow2 backing file name", path);
    _cleanup_free_ char *name = malloc(len + 1);
    if (!name)
        return al_error_set(err, ENOMEM, "reading %s", path);
    k = pread(fd, name, len, (off_t)off);
    if (k != (ssize_t)len)
        return al_error_set(err, EIO, "%s: short read of the qcow2 backing file name", path);
    name[len] = '\0';
    if (memchr(name, '\0', len))
        return al_error_set(err, EINVAL, "%s: bad qcow2 backing file name", path);
    if (name[0] == '/' || strstr(name, "://") || strncmp(name, "json:", 5) == 0) {
        *ret_backing = TAKE_PTR(name);
        return 0;
    }
    _cleanup_free_ char *dir = strdup(path);
    if (!dir)
        return al_error_set(err, ENOMEM, "reading %s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) {
        *ret_backing = TAKE_PTR(name);
        return 0;
    }
    *slash = '\0';
    *ret_backing = al_path_join(dir[0] ? dir : "/", name);
    return *ret_backing ? 0 : al_error_set(err, ENOMEM, "reading %s", path);
}

bool inuse_path_is_under(const char *path, const char *dir)
{
    char rp[PATH_MAX], rd[PATH_MAX];
    const char *p = realpath(path, rp) ? rp : path;
    const char *d = realpath(dir, rd) ? rd : dir;
    size_t dl = strlen(d);
    while (dl > 1 && d[dl - 1] == '/')
        dl--;
    return strncmp(p, d, dl) == 0 && (p[dl] == '/' || p[dl] == '\0');
}

static bool chain_uses(const char *path, const char *dir)
{
    _cleanup_free_ char *cur = strdup(path);
    for (int depth = 0; cur && depth < MAX_BACKING_DEPTH; depth++) {
        if (inuse_path_is_under(cur, dir))
            return true;
        char *next = NULL;
        /* an unreadable overlay cannot be followed; libvirt's own XML check covers it */
        if (inuse_qcow2_backing(cur, &next, NULL) < 0 || !next)
            return false;
        free(cur);
        cur = next;
    }
    return false;
}

static void quiet_libvirt(void *data, virErrorPtr e)
{
    (void)data;
    (void)e;
}

static void conn_closep(virConnectPtr *c)
{
    if (*c)
        virConnectClose(*c);
}

int inuse_libvirt_domains(const char *uri, const char *dir, char ***ret_names,
                          struct al_error **err)
{
    virSetErrorFunc(NULL, quiet_libvirt);
    _cleanup_(conn_closep) virConnectPtr conn = virConnectOpenReadOnly(uri);
    if (!conn)
        return al_error_set(err, EHOSTDOWN, "connecting to %s: %s", uri, virGetLastErrorMessage());
    virDomainPtr *doms = NULL;
    int nd = virConnectListAllDomains(conn, &doms, 0);
    if (nd < 0)
        return al_error_set(err, EIO, "listing domains on %s: %s", uri, virGetLastErrorMessage());

    char **names = calloc(1, sizeof(char *));
    size_t nn = 0;
    int r = names ? 0 : -ENOMEM;
    for (int i = 0; i < nd; i++) {
        if (r == 0) {
            _cleanup_free_ char *xml = virDomainGetXMLDesc(doms[i], 0);
            _cleanup_strv_ char **paths = NULL;
            if (xml && inuse_domain_xml_paths(xml, &paths) == 0) {
                bool uses = false;
                for (char **p = paths; *p && !uses; p++)
                    uses = chain_uses(*p, dir);
                if (uses) {
                    const char *name = virDomainGetName(doms[i]);
                    r = strv_push(&names, &nn, strdup(name ? name : "?"));
                }
            }
        }
        virDomainFree(doms[i]);
    }
    free(doms);
    if (r < 0) {
        strv_free(names);
        return al_error_set(err, ENOMEM, "listing domains");
    }
    *ret_names = names;
    return 0;
}
