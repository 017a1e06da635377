#include "images/packages.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/util.h"

void image_packages_free(struct image_package *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        free(v[i].version);
    }
    free(v);
}

static int pkg_cmp(const void *a, const void *b)
{
    const struct image_package *x = a, *y = b;
    return strcmp(x->name, y->name);
}

struct entry {
    const char *pkg, *version, *status, *arch;
    size_t pkg_len, version_len, status_len, arch_len;
};

static bool field(const char *line, size_t len, const char *key, const char **ret, size_t *ret_len)
{
    size_t k = strlen(key);
    if (len <= k || strncmp(line, key, k) != 0 || line[k] != ':')
        return false;
    const char *v = line + k + 1;
    const char *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        end--;
    *ret = v;
    *ret_len = (size_t)(end - v);
    return true;
}

int dpkg_status_parse(const char *text, struct image_package **ret, size_t *ret_n,
                      struct al_error **err)
{
    struct image_package *v = NULL;
    size_t n = 0;
    struct entry e = {0};
    const char *native = NULL;
    size_t native_len = 0;
    for (const char *line = text;;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        if (len == 0 || (len == 1 && line[0] == '\r')) {
            if (e.pkg && e.version && e.status && e.status_len == 20 &&
                memcmp(e.status, "install ok installed", 20) == 0) {
                if (n >= DPKG_MAX_PACKAGES) {
                    image_packages_free(v, n);
                    return al_error_set(err, E2BIG, "more than %d packages", DPKG_MAX_PACKAGES);
                }
                /* the first arch-specific package fixes the native architecture */
                if (!native && e.arch && !(e.arch_len == 3 && memcmp(e.arch, "all", 3) == 0)) {
                    native = e.arch;
                    native_len = e.arch_len;
                }
                bool foreign = e.arch && native &&
                               !(e.arch_len == 3 && !memcmp(e.arch, "all", 3)) &&
                               !(e.arch_len == native_len && !memcmp(e.arch, native, native_len));
                struct image_package *nv = realloc(v, (n + 1) * sizeof(*v));
                if (!nv) {
                    image_packages_free(v, n);
                    return al_error_set(err, ENOMEM, "parsing dpkg status");
                }
                v = nv;
                char *name = NULL;
                if (foreign) {
                    if (asprintf(&name, "%.*s:%.*s", (int)e.pkg_len, e.pkg, (int)e.arch_len,
                                 e.arch) < 0)
                        name = NULL;
                } else {
                    name = strndup(e.pkg, e.pkg_len);
                }
                v[n].name = name;
                v[n].version = strndup(e.version, e.version_len);
                n++;
                if (!v[n - 1].name || !v[n - 1].version) {
                    image_packages_free(v, n);
                    return al_error_set(err, ENOMEM, "parsing dpkg status");
                }
            }
            e = (struct entry){0};
        } else if (line[0] != ' ' && line[0] != '\t') {
            (void)(field(line, len, "Package", &e.pkg, &e.pkg_len) ||
                   field(line, len, "Version", &e.version, &e.version_len) ||
                   field(line, len, "Status", &e.status, &e.status_len) ||
                   field(line, len, "Architecture", &e.arch, &e.arch_len));
        }
        if (!nl) {
            if (len == 0)
                break;
            line += len; /* flush the last stanza through the empty-line branch */
            continue;
        }
        line = nl + 1;
    }
    if (n > 1)
        qsort(v, n, sizeof(*v), pkg_cmp);
    *ret = v;
    *ret_n = n;
    return 0;
}
